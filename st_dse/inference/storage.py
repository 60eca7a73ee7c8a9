"""StoredMatrix: the rows of a CandidateIndex (embeddings or head vectors), as float32, float16 or int8."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from sentence_transformers import quantize_embeddings
from torch import Tensor

from st_dse.checks import one_of
from st_dse.integrity import CorruptFileError

StorageDtype = Literal["float32", "float16", "int8"]
COPY_ROWS = 65536  # rows copied at a time between host and accelerator, or from chunks into storage
REBUILD = (
    "Rebuild the index (CandidateIndex.from_sentences(model, corpus).save(path)), or copy the whole folder again."
)


def corrupt(path: Path, problem: str) -> CorruptFileError:
    return CorruptFileError(f"{path} {problem}. {REBUILD}", path)


class StoredMatrix:
    """A ``(rows, columns)`` float matrix kept as float32, float16 or int8 (the codes of
    :func:`sentence_transformers.quantize_embeddings`, read back as ``code * scale + center``).

    Args:
        data: The stored values: a numpy array (host memory, or a ``np.memmap``) or a torch tensor (an accelerator).
        dtype: What ``data`` holds: ``"float32"``, ``"float16"`` or ``"int8"``.
        scale, center: int8 only: the per-column maps, float32 arrays of shape ``(columns,)``.
    """

    def __init__(self, data: np.ndarray | Tensor, dtype: StorageDtype, scale=None, center=None) -> None:
        self.data, self.dtype, self.scale, self.center = data, dtype, scale, center
        if scale is not None:
            self.scale_tensor, self.center_tensor = (torch.from_numpy(m).to(self.device) for m in (scale, center))

    @classmethod
    def from_float(cls, values: np.ndarray | Tensor, dtype: StorageDtype) -> StoredMatrix:
        """Store a float matrix (a numpy array or a tensor) in host memory."""
        if isinstance(values, Tensor):
            values = values.detach().to("cpu", torch.float32).numpy()
        if dtype == "float32":
            return cls(np.ascontiguousarray(values, dtype=np.float32), dtype)
        return cls.from_chunks(lambda: [values], dtype)

    @classmethod
    def from_chunks(
        cls, chunks: Callable[[], Iterable[np.ndarray]], dtype: StorageDtype, path: str | os.PathLike | None = None
    ) -> StoredMatrix:
        """Store the rows ``chunks()`` yields without holding them all in float32. ``chunks`` is called twice and must
        yield the same rows both times; with ``path`` they go to a new memory-mapped ``.npy`` file (the caller's)."""
        one_of("storage_dtype", dtype, get_args(StorageDtype))
        # quantize_embeddings' int8 ranges (per-column min and max) over every chunk, which it cannot see at once.
        stats = [(len(c), c.min(0, initial=np.inf), c.max(0, initial=-np.inf)) for c in _float32(chunks())]
        if not stats:
            raise ValueError("chunks() yielded nothing; yield at least one (possibly empty) 2-d array of rows.")
        rows, lows, highs = sum(s[0] for s in stats), [s[1] for s in stats], [s[2] for s in stats]
        ranges = np.stack([np.min(lows, 0), np.max(highs, 0)]) if rows else np.zeros((2, len(lows[0])), np.float32)
        if dtype == "float16" and np.abs(ranges).max(initial=0) > 65504:
            raise ValueError("Values exceed the float16 range; store this index as float32 or int8.")
        shape = (rows, ranges.shape[1])
        data = np.empty(shape, dtype) if path is None else np.lib.format.open_memmap(path, "w+", dtype, shape)
        start = 0
        for chunk in _float32(chunks()):
            data[start : start + len(chunk)] = quantize_embeddings(chunk, "int8", ranges) if dtype == "int8" else chunk
            start += len(chunk)
        if start != rows:
            raise ValueError(f"chunks() yielded {rows} rows, then {start}: it must yield the same rows each time.")
        if path is not None:
            data.flush()
        scale = (ranges[1] - ranges[0]) / 255  # quantize_embeddings' step; code c is step c + 128 of [low, high]
        return cls(data, dtype, scale, ranges[0] + 128.5 * scale) if dtype == "int8" else cls(data, dtype)

    def _copy_into(self, out: np.ndarray | Tensor) -> np.ndarray | Tensor:
        for start in range(0, len(self), COPY_ROWS):
            chunk = self.raw_chunk(start, start + COPY_ROWS)
            out[start : start + COPY_ROWS] = chunk.to(out.device) if isinstance(out, Tensor) else chunk.cpu().numpy()
        return out

    def to(self, device: str | torch.device) -> StoredMatrix:
        """The same rows on ``device`` (``"cpu"``: host memory, as a numpy array), copied in chunks."""
        device = torch.device(device)
        # An unnumbered "cuda" is whichever GPU holds the rows.
        if device.type == self.device.type and device.index in (None, self.device.index):
            return self
        out = torch.empty(self.shape, dtype=getattr(torch, self.dtype), device=device)
        out = self._copy_into(out.numpy() if device.type == "cpu" else out)
        return StoredMatrix(out, self.dtype, self.scale, self.center)

    def __len__(self) -> int:
        return len(self.data)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.data.shape)

    @property
    def device(self) -> torch.device:
        return self.data.device if isinstance(self.data, Tensor) else torch.device("cpu")

    @property
    def is_memory_mapped(self) -> bool:
        return isinstance(self.data, np.memmap)

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (0 if self.scale is None else self.scale.nbytes + self.center.nbytes)

    def raw_chunk(self, start: int, stop: int) -> Tensor:
        """Stored values of rows [start, stop) as a tensor where they are, without a copy where possible."""
        if isinstance(self.data, Tensor):
            return self.data[start:stop]
        with warnings.catch_warnings():  # memory-mapped arrays are read-only; they are only read here
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.asarray(self.data[start:stop]))

    def chunk(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) in float32."""
        return self._dequantize(self.raw_chunk(start, stop))

    def rows(self, ids: Tensor | np.ndarray) -> Tensor:
        """Rows at arbitrary positions, in float32, on the storage's device."""
        if isinstance(self.data, Tensor):
            return self._dequantize(self.data[torch.as_tensor(ids, device=self.device).long()])
        ids = np.asarray(torch.as_tensor(ids).cpu(), dtype=np.int64).reshape(-1)
        order = np.argsort(ids, kind="stable")  # sorted reads touch each memory-mapped page once
        gathered = np.empty((ids.size, self.shape[1]), dtype=self.data.dtype)
        gathered[order] = self.data[ids[order]]
        return self._dequantize(torch.from_numpy(gathered))

    def matmul(self, right: Tensor, start: int, stop: int) -> Tensor:
        """``rows[start:stop] @ right`` in float32 (int8: the maps folded into ``right``)."""
        raw = self.raw_chunk(start, stop).float()
        if self.dtype != "int8":
            return raw @ right
        return raw @ (right * self.scale_tensor[:, None]) + self.center_tensor @ right

    def to_float32(self) -> np.ndarray:
        """All rows in float32, as a host numpy array."""
        return self.chunk(0, len(self)).cpu().numpy()

    def _dequantize(self, raw: Tensor) -> Tensor:
        return raw.float() if self.scale is None else torch.addcmul(self.center_tensor, raw.float(), self.scale_tensor)

    @staticmethod
    def file_names(name: str, dtype: StorageDtype) -> list[str]:
        """The files :meth:`save` writes for a matrix called ``name``."""
        return [f"{name}.npy", *([f"{name}.scale.npy", f"{name}.center.npy"] if dtype == "int8" else [])]

    def save(self, directory: Path, name: str) -> None:
        """Write :meth:`file_names` into ``directory``, in chunks (rows on an accelerator need no host copy)."""
        main, *maps = self.file_names(name, self.dtype)
        self._copy_into(np.lib.format.open_memmap(directory / main, "w+", self.dtype, self.shape)).flush()
        for file, values in zip(maps, (self.scale, self.center)):
            np.save(directory / file, values)

    @classmethod
    def load(cls, directory: Path, name: str, dtype: StorageDtype, shape, mmap: bool = True, device="cpu"):
        """Read what :meth:`save` wrote, checking dtype and ``shape``: memory-mapped on the CPU with ``mmap``, else
        copied to ``device`` in chunks. A missing or damaged file raises a :class:`CorruptFileError` naming it."""
        main, *maps = cls.file_names(name, dtype)
        data = load_array(directory / main, dtype, shape, mmap=mmap)
        return cls(data, dtype, *(load_array(directory / file, np.float32, shape[1:]) for file in maps)).to(device)


def _float32(chunks: Iterable[np.ndarray]) -> Iterable[np.ndarray]:
    return (np.asarray(chunk, dtype=np.float32) for chunk in chunks)


def load_array(path: Path, dtype, shape: tuple[int, ...], mmap: bool = False) -> np.ndarray:
    """The ``.npy`` array of ``dtype`` and ``shape`` at ``path``, or a :class:`CorruptFileError` naming it."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise corrupt(path, "is missing: the saved folder is incomplete") from None
    except (ValueError, OSError, EOFError) as error:
        raise corrupt(path, f"is not a readable .npy array ({error}): the file is damaged (truncated?)") from None
    if array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
        expected = f"{np.dtype(dtype)} of shape {tuple(shape)}"
        problem = f"holds {array.dtype} values of shape {array.shape}, but {expected} were expected"
        raise corrupt(path, problem + ": the folder mixes files from different saves")
    return array
