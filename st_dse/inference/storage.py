"""StoredMatrix: the rows of a CandidateIndex (embeddings or head vectors), as float32, float16 or int8."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from sentence_transformers import quantize_embeddings
from torch import Tensor

from st_dse.checks import one_of
from st_dse.integrity import CorruptFileError

StorageDtype = Literal["float32", "float16", "int8"]
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
# Rows copied at a time between host and accelerator, or from a source of chunks into storage.
COPY_ROWS = 65536
REBUILD = (
    "Rebuild the index (CandidateIndex.from_sentences(model, corpus).save(path)), or copy the whole folder again."
)


def corrupt(path: Path, problem: str) -> CorruptFileError:
    return CorruptFileError(f"{path} {problem}. {REBUILD}", path)


class StoredMatrix:
    """A ``(rows, columns)`` float matrix kept as float32, float16 or int8, read in float32 chunks, gathered by id, or
    multiplied by a matrix without turning it all into float32.

    int8 holds :func:`sentence_transformers.quantize_embeddings` codes, read back as ``code * scale + center``.

    Args:
        data: The stored values: a numpy array (host memory, or a ``np.memmap``) or a torch tensor (an accelerator).
        dtype: ``"float32"``, ``"float16"`` or ``"int8"``; what ``data`` holds.
        scale, center: int8 only: the per-column maps, float32 arrays of shape ``(columns,)``.
    """

    def __init__(
        self,
        data: np.ndarray | Tensor,
        dtype: StorageDtype,
        scale: np.ndarray | None = None,
        center: np.ndarray | None = None,
    ) -> None:
        self.data, self.dtype = data, dtype
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        if scale is not None:
            self.scale_tensor = torch.from_numpy(self.scale).to(self.device)
            self.center_tensor = torch.from_numpy(self.center).to(self.device)

    @classmethod
    def from_float(cls, values: np.ndarray | Tensor, dtype: StorageDtype) -> StoredMatrix:
        """Store a float matrix (a numpy array or a tensor), in host memory."""
        if isinstance(values, Tensor):
            values = values.detach().to("cpu", torch.float32).numpy()
        values = np.asarray(values, dtype=np.float32)
        return (
            cls(np.ascontiguousarray(values), dtype)
            if dtype == "float32"
            else cls.from_chunks(lambda: [values], dtype)
        )

    @classmethod
    def from_chunks(
        cls, chunks: Callable[[], Iterable[np.ndarray]], dtype: StorageDtype, path: str | os.PathLike | None = None
    ) -> StoredMatrix:
        """Store the rows that ``chunks()`` yields, in order, without holding them all in float32 at once.

        ``chunks`` is called twice (ranges, then rows) and must yield the same rows both times. With ``path`` the
        rows go to a new memory-mapped ``.npy`` file there (the caller's to delete).
        """
        one_of("storage_dtype", dtype, tuple(NUMPY_DTYPES))
        rows, low, high = 0, np.float32(np.inf), np.float32(-np.inf)
        for chunk in chunks():
            chunk = np.asarray(chunk, dtype=np.float32)
            rows += len(chunk)
            low = np.minimum(low, chunk.min(axis=0, initial=np.inf))
            high = np.maximum(high, chunk.max(axis=0, initial=-np.inf))
        if np.ndim(low) == 0:
            raise ValueError("chunks() yielded nothing; yield at least one (possibly empty) 2-d array of rows.")
        if rows == 0:
            low = high = np.zeros_like(low)
        if dtype == "float16" and np.abs(np.concatenate([low, high])).max(initial=0) > 65504:
            raise ValueError("Values exceed the float16 range; store this index as float32 or int8.")
        scale = center = None
        if dtype == "int8":
            # The steps quantize_embeddings cuts [low, high] into; it gives each value its step's index - 128.
            step = (high - low) / 255
            scale = np.where(step == 0, 0, step)
            center = np.where(step == 0, low, low + 128.5 * step)
        shape, numpy_dtype = (rows, len(low)), NUMPY_DTYPES[dtype]
        data = (
            np.empty(shape, numpy_dtype) if path is None else np.lib.format.open_memmap(path, "w+", numpy_dtype, shape)
        )
        start = 0
        for chunk in chunks():
            chunk = np.asarray(chunk, dtype=np.float32)
            if dtype == "int8":
                chunk = quantize_embeddings(chunk, "int8", ranges=np.stack([low, high]))
            data[start : start + len(chunk)] = chunk
            start += len(chunk)
        if start != rows:
            raise ValueError(f"chunks() yielded {rows} rows, then {start}: it must yield the same rows each time.")
        if path is not None:
            data.flush()
        return cls(data, dtype, scale, center)

    def to(self, device: str | torch.device) -> StoredMatrix:
        """The same rows on ``device`` (``"cpu"`` puts them in host memory as a numpy array), copied in chunks."""
        device = torch.device(device)
        if device == self.device:
            return self
        on_host = device.type == "cpu"
        empty = np.empty(self.shape, NUMPY_DTYPES[self.dtype]) if on_host else None
        data = empty if on_host else torch.empty(self.shape, dtype=TORCH_DTYPES[self.dtype], device=device)
        for start in range(0, len(self), COPY_ROWS):
            chunk = self.raw_chunk(start, start + COPY_ROWS)
            data[start : start + COPY_ROWS] = chunk.cpu().numpy() if on_host else chunk.to(device)
        return StoredMatrix(data, self.dtype, self.scale, self.center)

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
        maps = 0 if self.scale is None else self.scale.nbytes + self.center.nbytes
        return len(self) * self.shape[1] * np.dtype(NUMPY_DTYPES[self.dtype]).itemsize + maps

    def raw_chunk(self, start: int, stop: int) -> Tensor:
        """Stored values of rows [start, stop) as a tensor where they are, without a copy where possible."""
        if isinstance(self.data, Tensor):
            return self.data[start:stop]
        with warnings.catch_warnings():
            # Memory-mapped arrays are read-only; they are only ever read here.
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(np.asarray(self.data[start:stop]))

    def chunk(self, start: int, stop: int) -> Tensor:
        """Rows [start, stop) in float32."""
        return self._dequantize(self.raw_chunk(start, stop))

    def rows(self, ids: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        """Rows at arbitrary positions, in float32, on the storage's device."""
        if isinstance(self.data, Tensor):
            return self._dequantize(self.data.index_select(0, torch.as_tensor(ids, device=self.device).long()))
        ids = np.asarray(ids.cpu() if isinstance(ids, Tensor) else ids, dtype=np.int64).reshape(-1)
        # Sorted reads touch each memory-mapped page once; the order is restored afterwards.
        order = np.argsort(ids, kind="stable")
        gathered = np.empty((ids.size, self.shape[1]), dtype=self.data.dtype)
        gathered[order] = self.data[ids[order]]
        return self._dequantize(torch.from_numpy(gathered))

    def matmul(self, right: Tensor, start: int, stop: int) -> Tensor:
        """``rows[start:stop] @ right`` in float32, for ``right`` of shape ``(columns, k)`` on the storage's device.

        For int8 the scale is folded into ``right`` and the center into a constant, so the codes are only cast.
        """
        raw = self.raw_chunk(start, stop).float()
        if self.dtype != "int8":
            return raw @ right
        return raw @ (right * self.scale_tensor[:, None]) + self.center_tensor @ right

    def to_float32(self) -> np.ndarray:
        """All rows in float32, as a host numpy array."""
        chunks = [self.chunk(start, start + COPY_ROWS).cpu().numpy() for start in range(0, len(self), COPY_ROWS)]
        return np.concatenate(chunks) if chunks else np.zeros(self.shape, dtype=np.float32)

    def _dequantize(self, raw: Tensor) -> Tensor:
        if self.dtype == "int8":
            return torch.addcmul(self.center_tensor, raw.float(), self.scale_tensor)
        return raw.float()

    @staticmethod
    def file_names(name: str, dtype: StorageDtype) -> list[str]:
        """The files :meth:`save` writes for a matrix called ``name``."""
        return [f"{name}.npy", *([f"{name}.scale.npy", f"{name}.center.npy"] if dtype == "int8" else [])]

    def save(self, directory: Path, name: str) -> None:
        """Write ``name.npy`` (and, for int8, ``name.scale.npy`` and ``name.center.npy``) into ``directory``."""
        # Written in chunks: rows on an accelerator need no second full copy in host memory.
        path, numpy_dtype = directory / f"{name}.npy", NUMPY_DTYPES[self.dtype]
        out = np.lib.format.open_memmap(path, mode="w+", dtype=numpy_dtype, shape=self.shape)
        for start in range(0, len(self), COPY_ROWS):
            out[start : start + COPY_ROWS] = self.raw_chunk(start, start + COPY_ROWS).cpu().numpy()
        out.flush()
        del out
        if self.dtype == "int8":
            np.save(directory / f"{name}.scale.npy", self.scale)
            np.save(directory / f"{name}.center.npy", self.center)

    @classmethod
    def load(
        cls, directory: Path, name: str, dtype: StorageDtype, shape: tuple[int, int], mmap: bool = True, device="cpu"
    ) -> StoredMatrix:
        """Read a matrix written by :meth:`save`, checking that its files hold ``dtype`` values of ``shape``.

        On the CPU with ``mmap`` the rows are memory-mapped; on an accelerator they are copied there in chunks.
        A file that is missing, unreadable or of another dtype or shape raises a :class:`CorruptFileError` naming it.
        """
        data = load_array(directory / f"{name}.npy", NUMPY_DTYPES[dtype], shape, mmap=mmap)
        maps = [load_array(directory / file, np.float32, shape[1:]) for file in cls.file_names(name, dtype)[1:]]
        return cls(data, dtype, *maps).to(device)


def load_array(path: Path, dtype: type | np.dtype, shape: tuple[int, ...], mmap: bool = False) -> np.ndarray:
    """An ``.npy`` array of ``dtype`` and ``shape``, or a :class:`CorruptFileError` naming ``path``: missing,
    unreadable (truncated, not an ``.npy`` file) or another dtype or shape."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        missing = isinstance(error, FileNotFoundError)
        problem = f"is not a readable .npy array ({error}): the file is damaged (truncated?)"
        raise corrupt(path, "is missing: the saved folder is incomplete" if missing else problem) from None
    if array.dtype != np.dtype(dtype) or array.shape != tuple(shape):
        raise corrupt(
            path,
            f"holds {array.dtype} values of shape {array.shape}, but {np.dtype(dtype)} of shape {tuple(shape)} were "
            "expected: the folder mixes files from different saves",
        )
    return array
