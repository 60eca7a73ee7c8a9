"""StoredMatrix: the rows of a CandidateIndex (embeddings or head vectors), as float32, float16 or int8.

The rows live in host memory (a numpy array, possibly memory-mapped from a saved ``.npy`` file) or on an accelerator
(a torch tensor on ``cuda``); either way they are read in float32 chunks, gathered by id, or multiplied by a matrix
without first turning the whole matrix into float32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from st_dse.integrity import CorruptFileError

StorageDtype = Literal["float32", "float16", "int8"]
STORAGE_DTYPES = ("float32", "float16", "int8")
NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8}
TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "int8": torch.int8}
# Rows copied at a time between host and accelerator, or from a source of chunks into storage.
COPY_ROWS = 65536
REBUILD = (
    "Rebuild the index (CandidateIndex.from_sentences(model, corpus).save(path)), or copy the whole saved folder "
    "again."
)


class StoredMatrix:
    """A ``(rows, columns)`` float matrix kept as float32, float16 or int8, readable in float32 chunks.

    int8 uses one affine map per column: ``value = code * scale + center`` with codes in [-127, 127], so each column
    keeps its own range; the rounding error is at most ``scale / 2`` per value.

    Args:
        data: The stored values: a numpy array (host memory, or a ``np.memmap``) or a torch tensor on any device.
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
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {dtype!r}.")
        if (dtype == "int8") != (scale is not None and center is not None):
            raise ValueError("int8 storage needs a scale and a center per column; float storage takes neither.")
        self.data = data
        self.dtype = dtype
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float32)
        self.center = None if center is None else np.asarray(center, dtype=np.float32)
        # The per-column maps as tensors where the rows are, made once.
        self._scale = None if scale is None else torch.from_numpy(self.scale).to(self.device)
        self._center = None if center is None else torch.from_numpy(self.center).to(self.device)

    # -- building ----------------------------------------------------------------------------------------------------

    @classmethod
    def from_float(cls, values: np.ndarray | Tensor, dtype: StorageDtype) -> StoredMatrix:
        """Store a float matrix (a numpy array or a tensor, kept on the host)."""
        if isinstance(values, Tensor):
            values = values.detach().to("cpu", torch.float32).numpy()
        values = np.asarray(values, dtype=np.float32)
        if dtype == "float32":
            return cls(np.ascontiguousarray(values), dtype)
        return cls.from_chunks(lambda: iter([values]), dtype)

    @classmethod
    def from_chunks(
        cls, chunks: Callable[[], Iterable[np.ndarray]], dtype: StorageDtype, path: str | os.PathLike | None = None
    ) -> StoredMatrix:
        """Store the rows that ``chunks()`` yields, in order, without holding them all in float32 at once.

        ``chunks`` is called twice: once to learn the number of rows and each column's range, once to store them, so
        it must yield the same rows both times (e.g. regenerate them from a seed, or read them from a file). Peak
        memory is the stored matrix plus one chunk; with ``path`` the rows go to a new ``.npy`` file there instead,
        memory-mapped, so that a corpus larger than memory can be stored (the file is the caller's to delete).
        """
        if dtype not in STORAGE_DTYPES:
            raise ValueError(f"storage_dtype must be one of {STORAGE_DTYPES}, got {dtype!r}.")
        rows, low, high, columns = 0, None, None, None
        for chunk in chunks():
            chunk = np.asarray(chunk, dtype=np.float32)
            rows += len(chunk)
            if len(chunk):
                low = chunk.min(axis=0) if low is None else np.minimum(low, chunk.min(axis=0))
                high = chunk.max(axis=0) if high is None else np.maximum(high, chunk.max(axis=0))
            columns = chunk.shape[1]
        if columns is None:
            raise ValueError("chunks() yielded nothing; yield at least one (possibly empty) 2-d array of rows.")
        if rows == 0:
            low = high = np.zeros(columns, dtype=np.float32)
        if dtype == "float16" and max(np.abs(low).max(initial=0.0), np.abs(high).max(initial=0.0)) > 65504:
            raise ValueError("Values exceed the float16 range; store this index as float32 or int8.")
        scale = center = None
        if dtype == "int8":
            center = ((low + high) / 2).astype(np.float32)
            # A constant column has no range; any positive scale reproduces it exactly from code 0.
            scale = np.where(high > low, (high - low) / 254, 1.0).astype(np.float32)
        if path is None:
            data = np.empty((rows, columns), dtype=NUMPY_DTYPES[dtype])
        else:
            data = np.lib.format.open_memmap(path, mode="w+", dtype=NUMPY_DTYPES[dtype], shape=(rows, columns))
        start = 0
        for chunk in chunks():
            chunk = np.asarray(chunk, dtype=np.float32)
            if dtype == "int8":
                chunk = np.clip(np.rint((chunk - center) / scale), -127, 127)
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
        if device.type == "cpu":
            data = np.empty(self.shape, dtype=NUMPY_DTYPES[self.dtype])
            for start in range(0, len(self), COPY_ROWS):
                data[start : start + COPY_ROWS] = self.raw_chunk(start, start + COPY_ROWS).cpu().numpy()
        else:
            data = torch.empty(self.shape, dtype=TORCH_DTYPES[self.dtype], device=device)
            for start in range(0, len(self), COPY_ROWS):
                data[start : start + COPY_ROWS] = self.raw_chunk(start, start + COPY_ROWS).to(device)
        return StoredMatrix(data, self.dtype, self.scale, self.center)

    # -- reading -----------------------------------------------------------------------------------------------------

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
        extra = 0 if self.scale is None else self.scale.nbytes + self.center.nbytes
        if isinstance(self.data, Tensor):
            return self.data.numel() * self.data.element_size() + extra
        return int(self.data.nbytes) + extra

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
            ids = torch.as_tensor(ids, dtype=torch.long, device=self.device)
            return self._dequantize(self.data.index_select(0, ids))
        ids = ids.cpu().numpy() if isinstance(ids, Tensor) else np.asarray(ids)
        ids = ids.astype(np.int64, copy=False).reshape(-1)
        # Sorted reads touch each memory-mapped page once; the order is restored afterwards.
        order = np.argsort(ids, kind="stable")
        gathered = np.empty((ids.size, self.shape[1]), dtype=self.data.dtype)
        gathered[order] = self.data[ids[order]]
        return self._dequantize(torch.from_numpy(gathered))

    def matmul(self, right: Tensor, start: int, stop: int) -> Tensor:
        """``rows[start:stop] @ right`` in float32, for ``right`` of shape ``(columns, k)`` on the storage's device.

        For int8 the scale is folded into ``right`` and the center into a constant, so the codes are only cast.
        """
        raw = self.raw_chunk(start, stop)
        if self.dtype == "float32":
            return raw @ right
        if self.dtype == "float16":
            return raw.float() @ right
        return raw.float() @ (right * self._scale[:, None]) + self._center @ right

    def to_float32(self) -> np.ndarray:
        """All rows in float32, as a host numpy array."""
        chunks = [self.chunk(start, start + COPY_ROWS).cpu().numpy() for start in range(0, len(self), COPY_ROWS)]
        return np.concatenate(chunks) if chunks else np.zeros(self.shape, dtype=np.float32)

    def _dequantize(self, raw: Tensor) -> Tensor:
        if self.dtype == "float32":
            return raw
        values = raw.float()
        if self.dtype == "int8":
            values = torch.addcmul(self._center, values, self._scale)
        return values

    # -- saving and loading ------------------------------------------------------------------------------------------

    @staticmethod
    def file_names(name: str, dtype: StorageDtype) -> list[str]:
        """The files :meth:`save` writes for a matrix called ``name``."""
        extra = [f"{name}.scale.npy", f"{name}.center.npy"] if dtype == "int8" else []
        return [f"{name}.npy", *extra]

    def save(self, directory: Path, name: str) -> None:
        """Write ``name.npy`` (and, for int8, ``name.scale.npy`` and ``name.center.npy``) into ``directory``."""
        path = directory / f"{name}.npy"
        if isinstance(self.data, Tensor):  # written in chunks: no second full copy in host memory
            out = np.lib.format.open_memmap(path, mode="w+", dtype=NUMPY_DTYPES[self.dtype], shape=self.shape)
            for start in range(0, len(self), COPY_ROWS):
                out[start : start + COPY_ROWS] = self.raw_chunk(start, start + COPY_ROWS).cpu().numpy()
            out.flush()
            del out
        else:
            np.save(path, self.data)
        if self.dtype == "int8":
            np.save(directory / f"{name}.scale.npy", self.scale)
            np.save(directory / f"{name}.center.npy", self.center)

    @classmethod
    def load(
        cls,
        directory: Path,
        name: str,
        dtype: StorageDtype,
        shape: tuple[int, int],
        mmap: bool = True,
        device: str | torch.device = "cpu",
    ) -> StoredMatrix:
        """Read a matrix written by :meth:`save`, checking that its files hold ``dtype`` values of ``shape``.

        On the CPU with ``mmap`` the rows are memory-mapped; on an accelerator they are copied there in chunks.

        Raises:
            CorruptFileError: a file is missing, is not a readable ``.npy`` array (e.g. truncated), or holds another
                dtype or shape than expected; the message names the file.
        """
        device = torch.device(device)
        data = load_array(directory / f"{name}.npy", NUMPY_DTYPES[dtype], shape, mmap=mmap)
        scale = center = None
        if dtype == "int8":
            scale = load_array(directory / f"{name}.scale.npy", np.float32, (shape[1],))
            center = load_array(directory / f"{name}.center.npy", np.float32, (shape[1],))
        return cls(data, dtype, scale, center).to(device)


def load_array(
    path: Path, dtype: type | np.dtype, shape: tuple[int | None, ...], mmap: bool = False, remedy: str = REBUILD
) -> np.ndarray:
    """An ``.npy`` array of ``dtype`` and ``shape`` (``None`` = any size), or a :class:`CorruptFileError` naming
    ``path``: missing, unreadable (truncated, not an ``.npy`` file) or another dtype or shape."""
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except FileNotFoundError:
        raise CorruptFileError(f"{path} is missing: the saved folder is incomplete. {remedy}", path) from None
    except (ValueError, OSError, EOFError) as error:
        raise CorruptFileError(
            f"{path} is not a readable .npy array ({error}): the file is damaged (truncated?). {remedy}", path
        ) from None
    expected_dtype = np.dtype(dtype)
    fits = len(array.shape) == len(shape) and all(want in (None, got) for want, got in zip(shape, array.shape))
    if array.dtype != expected_dtype or not fits:
        wanted = "(" + ", ".join("any" if size is None else str(size) for size in shape) + ")"
        raise CorruptFileError(
            f"{path} holds {array.dtype} values of shape {tuple(array.shape)}, but {expected_dtype} of shape "
            f"{wanted} were expected: the folder mixes files from different saves. {remedy}",
            path,
        )
    return array
