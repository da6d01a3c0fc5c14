"""MNIST loader: IDX decoding against hand-made files, checksums, search order and error messages."""
import gzip
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch

from mpnn.data import mnist

SHARED = Path(os.environ.get("MPNN_DATA_DIR", ""))
HAVE_MNIST = all((SHARED / n).is_file() for n in mnist._all_names()) if str(SHARED) else False


def write_idx(path: Path, magic: int, dims: tuple[int, ...], payload: bytes) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in dims) + payload)


def test_read_idx_images_and_labels(tmp_path):
    pixels = bytes(range(2 * 3 * 4))
    write_idx(tmp_path / "img.gz", 2051, (2, 3, 4), pixels)
    write_idx(tmp_path / "lbl.gz", 2049, (3,), bytes([7, 0, 9]))
    images = mnist.read_idx(tmp_path / "img.gz")
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 4)
    assert images[1, 2, 3].item() == 23 and images[0, 1, 0].item() == 4  # row-major order
    assert mnist.read_idx(tmp_path / "lbl.gz").tolist() == [7, 0, 9]


def test_read_idx_rejects_truncated_and_bad_magic(tmp_path):
    write_idx(tmp_path / "short.gz", 2051, (2, 3, 4), bytes(10))
    with pytest.raises(mnist.MnistDataError, match="header promises"):
        mnist.read_idx(tmp_path / "short.gz")
    write_idx(tmp_path / "magic.gz", 1234, (1,), bytes(1))
    with pytest.raises(mnist.MnistDataError, match="magic"):
        mnist.read_idx(tmp_path / "magic.gz")
    (tmp_path / "broken.gz").write_bytes(gzip.compress(bytes(100))[:20])
    with pytest.raises(mnist.MnistDataError, match="truncated or corrupt"):
        mnist.read_idx(tmp_path / "broken.gz")


def test_missing_files_message_names_files_places_and_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_DATA_DIR", str(tmp_path / "env"))
    monkeypatch.setattr(mnist.paths, "DATA", tmp_path / "repo-data")
    with pytest.raises(mnist.MnistDataError) as err:
        mnist.load_mnist("train", root=tmp_path / "arg")
    message = str(err.value)
    for name in mnist._all_names():
        assert name in message
    for place in (tmp_path / "arg", tmp_path / "env", tmp_path / "repo-data" / "mnist"):
        assert str(place) in message
    assert "MPNN_DATA_DIR" in message and "download=True" in message


def test_search_order_argument_then_env_then_data(tmp_path, monkeypatch):
    for d in ("arg", "env"):
        (tmp_path / d).mkdir()
        for n in mnist._all_names():
            (tmp_path / d / n).write_bytes(b"x")
    monkeypatch.setenv("MPNN_DATA_DIR", str(tmp_path / "env"))
    assert mnist.mnist_dir(tmp_path / "arg") == tmp_path / "arg"
    assert mnist.mnist_dir(tmp_path / "nowhere") == tmp_path / "env"


def test_split_is_validated():
    with pytest.raises(ValueError, match="'train' or 'test'"):
        mnist.load_mnist("validation")


@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST files not available (set MPNN_DATA_DIR)")
def test_corrupt_file_reports_expected_and_actual_checksum(tmp_path, monkeypatch):
    for n in mnist._all_names():
        shutil.copyfile(SHARED / n, tmp_path / n)
    corrupt = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(corrupt.read_bytes())
    data[100] ^= 0xFF
    corrupt.write_bytes(bytes(data))
    monkeypatch.setenv("MPNN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(mnist.MnistDataError) as err:
        mnist.load_mnist("test", root=tmp_path)
    message = str(err.value)
    expected = mnist.expected_checksums()["t10k-labels-idx1-ubyte.gz"]
    assert "t10k-labels-idx1-ubyte.gz" in message and expected in message
    assert mnist.sha256(corrupt) in message
    with pytest.raises(mnist.MnistDataError, match="t10k-labels"):
        mnist.verify_mnist(tmp_path)


@pytest.mark.skipif(not HAVE_MNIST, reason="MNIST files not available (set MPNN_DATA_DIR)")
def test_real_mnist_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MPNN_CACHE_DIR", str(tmp_path / "cache"))
    x, y = mnist.load_mnist("test", root=SHARED)
    assert x.shape == (10_000, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    cached = list((tmp_path / "cache").glob("mnist-test-*.pt"))
    assert len(cached) == 1
    x2, y2 = mnist.load_mnist("test", root=SHARED)  # served from the cache
    assert torch.equal(x, x2) and torch.equal(y, y2)
    train_x, train_y = mnist.load_mnist("train", root=SHARED)
    assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]


def test_download_failure_explains(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    monkeypatch.delenv("MPNN_DATA_DIR", raising=False)
    monkeypatch.setattr(mnist.paths, "DATA", tmp_path)
    with pytest.raises(mnist.MnistDataError, match="Download failed: network is unreachable"):
        mnist.load_mnist("test", root=tmp_path / "none", download=True)
    assert not (tmp_path / "mnist").exists()  # nothing half written


def test_to_tensor_scales_and_shapes_against_hand_computed_pixels():
    import torch
    from mpnn.data.mnist import MNIST_MEAN, MNIST_STD, to_tensor
    images = torch.tensor([[[0, 255], [51, 102]]], dtype=torch.uint8)        # (1, 2, 2)
    unit = to_tensor(images, scale="unit")
    assert unit.shape == (1, 4) and unit.tolist()[0] == pytest.approx([0.0, 1.0, 0.2, 0.4])
    std = to_tensor(images, shape="image")
    assert std.shape == (1, 1, 2, 2)
    assert float(std[0, 0, 0, 0]) == pytest.approx(-MNIST_MEAN / MNIST_STD)
    assert float(std[0, 0, 0, 1]) == pytest.approx((1 - MNIST_MEAN) / MNIST_STD)
    assert to_tensor(images, shape="grid", dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match="uint8"):
        to_tensor(images.float())
    with pytest.raises(ValueError, match="scale"):
        to_tensor(images, scale="minmax")
    with pytest.raises(ValueError, match="shape"):
        to_tensor(images, shape="cube")
