"""MNIST from the original gzip-compressed IDX files, verified by SHA-256.

IDX format (LeCun et al.): big-endian int32 magic (2051 images, 2049 labels), the count, then for
images the rows and columns, then one unsigned byte per pixel / label.

Where the files are looked for, in order: the ``root`` argument, ``$MPNN_DATA_DIR``, ``data/mnist``.
Each file's SHA-256 must equal the checksum kept in ``data/mnist.sha256``. The decoded tensors are
cached in ``$MPNN_CACHE_DIR`` (default ``data/cache``) under a name derived from the checksums, so a
changed file can never be served from a stale cache.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import tempfile
from pathlib import Path

import torch

from ..infra import paths

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CHECKSUM_FILE = paths.DATA / "mnist.sha256"


class MnistDataError(RuntimeError):
    """MNIST files missing, corrupt or malformed; the message says how to fix it."""


def expected_checksums() -> dict[str, str]:
    sums = {}
    for line in CHECKSUM_FILE.read_text().splitlines():
        if line.strip():
            digest, name = line.split()
            sums[name.lstrip("*")] = digest
    return sums


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def candidate_dirs(root: str | os.PathLike | None = None) -> list[Path]:
    dirs = []
    if root is not None:
        dirs.append(Path(root))
    if os.environ.get("MPNN_DATA_DIR"):
        dirs.append(Path(os.environ["MPNN_DATA_DIR"]))
    dirs.append(paths.DATA / "mnist")
    return dirs


def _all_names() -> list[str]:
    return [name for pair in FILES.values() for name in pair]


def _missing_message(searched: list[Path]) -> str:
    names = "\n".join(f"  {n}" for n in _all_names())
    where = "\n".join(f"  {d}" for d in searched)
    return (f"MNIST files not found. Needed (gzip IDX, as originally published):\n{names}\n"
            f"Searched, in order:\n{where}\n"
            f"Provide them in one of these ways:\n"
            f"  * copy the four files into {paths.DATA / 'mnist'}\n"
            f"  * or set MPNN_DATA_DIR=/path/to/folder/with/the/files (or pass root=...)\n"
            f"  * or, on a machine with internet access, call load_mnist(download=True)\n"
            f"Checksums they must match: {CHECKSUM_FILE}")


def mnist_dir(root=None, *, download: bool = False) -> Path:
    """The first candidate folder holding all four files (downloading into data/mnist if asked)."""
    searched = candidate_dirs(root)
    for d in searched:
        if all((d / n).is_file() for n in _all_names()):
            return d
    if download:
        return _download(paths.DATA / "mnist", searched)
    raise MnistDataError(_missing_message(searched))


def _download(target: Path, searched: list[Path]) -> Path:
    """Fetch the four files with torchvision's mirrors, verify, then move them into ``target``."""
    try:
        from torchvision.datasets import MNIST
    except ImportError as exc:
        raise MnistDataError(_missing_message(searched) + "\n(torchvision is not installed)") from exc
    with tempfile.TemporaryDirectory() as tmp:
        try:
            MNIST(tmp, train=True, download=True)
            MNIST(tmp, train=False, download=True)
        except Exception as exc:  # network errors come in many types
            raise MnistDataError(_missing_message(searched) + f"\nDownload failed: {exc}") from exc
        raw = Path(tmp) / "MNIST" / "raw"
        verify_mnist(raw)
        target.mkdir(parents=True, exist_ok=True)
        for name in _all_names():
            shutil.copyfile(raw / name, target / name)
    return target


def verify_mnist(folder: Path) -> dict[str, str]:
    """Check every file's SHA-256; returns ``{name: digest}`` or raises naming the bad file."""
    expected = expected_checksums()
    found = {}
    for name in _all_names():
        path = Path(folder) / name
        actual = sha256(path)
        if actual != expected[name]:
            raise MnistDataError(
                f"{path} is corrupt or not the original MNIST file: SHA-256 is {actual}, "
                f"expected {expected[name]} (see {CHECKSUM_FILE}). Replace it with the original "
                f"file, or delete it and load with download=True on a machine with internet access.")
        found[name] = actual
    return found


def read_idx(path: Path) -> torch.Tensor:
    """Decode one gzip IDX file into a uint8 tensor (images (N, rows, cols), labels (N,))."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:
        raise MnistDataError(f"{path} could not be decompressed ({exc}); the file is truncated or corrupt") from exc
    if len(data) < 8:
        raise MnistDataError(f"{path} is too short to be an IDX file")
    magic, count = struct.unpack(">ii", data[:8])
    if magic == 2051:
        rows, cols = struct.unpack(">ii", data[8:16])
        shape, offset = (count, rows, cols), 16
    elif magic == 2049:
        shape, offset = (count,), 8
    else:
        raise MnistDataError(f"{path}: bad IDX magic number {magic} (expected 2051 or 2049)")
    expected = offset + int(torch.tensor(shape).prod())
    if len(data) != expected:
        raise MnistDataError(f"{path}: IDX header promises {expected} bytes, file has {len(data)}")
    return torch.frombuffer(bytearray(data[offset:]), dtype=torch.uint8).reshape(shape)


def cache_dir() -> Path:
    return Path(os.environ.get("MPNN_CACHE_DIR", paths.DATA / "cache"))


def load_mnist(split: str = "train", root=None, *, download: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)``: uint8 (N, 28, 28) and int64 (N,) for ``split`` in {"train", "test"}."""
    if split not in FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    folder = mnist_dir(root, download=download)
    expected = expected_checksums()
    img_name, lbl_name = FILES[split]
    for name in (img_name, lbl_name):
        actual = sha256(folder / name)
        if actual != expected[name]:
            raise MnistDataError(
                f"{folder / name} is corrupt or not the original MNIST file: SHA-256 is {actual}, "
                f"expected {expected[name]} (see {CHECKSUM_FILE}). Replace it with the original file.")
    key = expected[img_name][:16] + expected[lbl_name][:16]
    cached = cache_dir() / f"mnist-{split}-{key}.pt"
    if cached.exists():
        try:
            blob = torch.load(cached, weights_only=True)
            return blob["images"], blob["labels"]
        except Exception:
            cached.unlink(missing_ok=True)  # unreadable cache: rebuild it below
    images, labels = read_idx(folder / img_name), read_idx(folder / lbl_name).long()
    if images.shape[0] != labels.shape[0]:
        raise MnistDataError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_suffix(".tmp")
        torch.save({"images": images, "labels": labels}, tmp)
        tmp.replace(cached)
    except OSError:
        pass  # a read-only checkout still works, only slower
    return images, labels


def cached_load_claim(limit_s: float = 2.0, repeats: int = 3, root=None) -> dict:
    """Timing claim: loading both splits from the decoded-tensor cache (checksums included) takes
    under ``limit_s`` seconds; the median of ``repeats`` loads after one that fills the cache."""
    import statistics
    import time
    load_mnist("train", root), load_mnist("test", root)           # decodes and caches if needed
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        load_mnist("train", root), load_mnist("test", root)
        times.append(time.perf_counter() - t0)
    median = statistics.median(times)
    return {"passed": median < limit_s, "seconds": median,
            "measured": f"{median:.2f} s for both splits (median of {repeats}; limit {limit_s:g} s)"}


MNIST_MEAN, MNIST_STD = 0.1307, 0.3081   # pixel mean and standard deviation of the training set, in [0, 1]


def to_tensor(images: torch.Tensor, *, scale: str = "standard", shape: str = "flat", device=None,
              dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 images (N, 28, 28) -> float model inputs; the book's one conversion of MNIST pixels.

    ``scale``: ``"unit"`` gives ``x / 255`` in [0, 1]; ``"standard"`` gives
    ``(x / 255 - 0.1307) / 0.3081`` (zero mean, unit variance over the training set).
    ``shape``: ``"flat"`` (N, 784), ``"image"`` (N, 1, 28, 28) or ``"grid"`` (N, 28, 28).
    """
    if images.dtype != torch.uint8 or images.dim() != 3:
        raise ValueError(f"expected uint8 images (N, H, W) as load_mnist returns them, got "
                         f"{tuple(images.shape)} {images.dtype}")
    x = images.to(device=device, dtype=dtype) / 255.0
    if scale == "standard":
        x = (x - MNIST_MEAN) / MNIST_STD
    elif scale != "unit":
        raise ValueError(f"scale must be 'unit' or 'standard', got {scale!r}")
    if shape == "flat":
        return x.reshape(len(x), -1)
    if shape == "image":
        return x.unsqueeze(1)
    if shape == "grid":
        return x
    raise ValueError(f"shape must be 'flat', 'image' or 'grid', got {shape!r}")
