"""StoredMatrix: int8 quantisation error, chunked building, device copies, and checked reads of .npy files."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from st_dse.inference.storage import StoredMatrix, load_array
from st_dse.integrity import CorruptFileError

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda.is_available() is False")
    ),
]


@pytest.fixture(scope="module")
def candidates() -> np.ndarray:
    return (np.random.default_rng(0).standard_normal((60, 16)) * 0.3).astype(np.float32)


def test_int8_storage_error_is_bounded(candidates):
    stored = StoredMatrix.from_float(candidates, "int8")
    assert stored.data.dtype == np.int8 and stored.nbytes < candidates.nbytes / 3
    error = np.abs(stored.to_float32() - candidates)
    assert (error <= stored.scale / 2 + 1e-6).all()
    constant = StoredMatrix.from_float(np.full((4, 3), 2.5, dtype=np.float32), "int8")
    np.testing.assert_array_equal(constant.to_float32(), np.full((4, 3), 2.5, dtype=np.float32))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_from_chunks_stores_what_from_float_stores(candidates, dtype, tmp_path):
    whole = StoredMatrix.from_float(candidates, dtype)
    chunked = StoredMatrix.from_chunks(lambda: (candidates[start : start + 7] for start in range(0, 60, 7)), dtype)
    np.testing.assert_array_equal(chunked.data, whole.data)
    if dtype == "int8":
        np.testing.assert_array_equal(chunked.scale, whole.scale)
        np.testing.assert_array_equal(chunked.center, whole.center)
    on_disk = StoredMatrix.from_chunks(
        lambda: iter([candidates[:30], candidates[30:]]), dtype, path=tmp_path / "x.npy"
    )
    assert on_disk.is_memory_mapped
    np.testing.assert_array_equal(on_disk.data, whole.data)
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), whole.data)
    with pytest.raises(ValueError, match="exceed the float16 range"):
        StoredMatrix.from_chunks(lambda: iter([np.full((2, 3), 1e5, dtype=np.float32)]), "float16")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_reads_agree_on_every_device(candidates, dtype, device, tmp_path):
    stored = StoredMatrix.from_float(candidates, dtype)
    moved = stored.to(device)
    assert moved.device.type == device
    ids = np.array([5, 0, 59, 5, 17])
    right = torch.from_numpy(np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32))
    torch.testing.assert_close(moved.rows(ids).cpu(), stored.rows(ids))
    torch.testing.assert_close(moved.chunk(10, 30).cpu(), stored.chunk(10, 30))
    torch.testing.assert_close(moved.matmul(right.to(device), 3, 40).cpu(), stored.matmul(right, 3, 40))
    moved.save(tmp_path, "rows")
    loaded = StoredMatrix.load(tmp_path, "rows", dtype, candidates.shape, mmap=True)
    assert loaded.is_memory_mapped
    np.testing.assert_array_equal(loaded.to_float32(), stored.to_float32())


def test_unreadable_or_misshapen_arrays_name_the_file(tmp_path, candidates):
    path = tmp_path / "rows.npy"
    np.save(path, candidates)
    assert load_array(path, np.float32, (60, 16)).shape == (60, 16)
    with pytest.raises(CorruptFileError, match=r"rows\.npy holds float32 values of shape \(60, 16\), but float16"):
        load_array(path, np.float16, (60, 16))
    with pytest.raises(
        CorruptFileError, match=r"rows\.npy holds .* shape \(60, 16\), but float32 of shape \(59, 16\)"
    ):
        load_array(path, np.float32, (59, 16))
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - 100)
    for mmap in (True, False):
        with pytest.raises(CorruptFileError, match=r"rows\.npy is not a readable \.npy array") as raised:
            load_array(path, np.float32, (60, 16), mmap=mmap)
        assert raised.value.path == path
    path.write_bytes(b"not an array at all")
    with pytest.raises(CorruptFileError, match=r"rows\.npy is not a readable \.npy array"):
        load_array(path, np.float32, (60, 16))
    with pytest.raises(CorruptFileError, match=r"missing\.npy is missing"):
        load_array(tmp_path / "missing.npy", np.float32, (60, 16))


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_tensor_backed_rows_read_like_numpy_backed(candidates, dtype, tmp_path):
    # An accelerator keeps rows as a torch tensor; the same code path runs here with a CPU tensor.
    stored = StoredMatrix.from_float(candidates, dtype)
    backed = StoredMatrix(torch.from_numpy(stored.data.copy()), dtype, stored.scale, stored.center)
    assert not backed.is_memory_mapped and backed.nbytes == stored.nbytes
    ids = torch.tensor([3, 3, 59, 0])
    torch.testing.assert_close(backed.rows(ids), stored.rows(ids))
    right = torch.ones(16, 2)
    torch.testing.assert_close(backed.matmul(right, 0, 60), stored.matmul(right, 0, 60))
    np.testing.assert_array_equal(backed.to("cpu").to_float32(), stored.to_float32())
    backed.save(tmp_path, "rows")
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), stored.data)
