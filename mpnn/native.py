"""Small C++ kernels compiled at first use: g++ (or ``$CXX``), cached, loaded with ctypes.

A kernel is plain C++ over raw float/int arrays (no torch headers, so a build takes about a second).
:func:`load` compiles ``source`` once per (source, flags, compiler, host) into
``$MPNN_CACHE_DIR/fused`` (default ``~/.cache/mpnn/fused``), writing to a temporary name first and
renaming it (a half-written library is never loaded), and returns the ``extern "C"`` function with
its ctypes signature -- or ``None`` where there is no compiler, the build fails, ``MPNN_FUSED=0``, or
inside :func:`disabled`.
Every caller keeps a pure-torch path for ``None``, and its tests run both.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["-O3", "-march=native", "-shared", "-fPIC", "-std=c++17"]
_LOADED: dict[tuple[str, str], object] = {}
_DISABLED = [0]                                   # depth of open :func:`disabled` blocks


def enabled() -> bool:
    """False when ``MPNN_FUSED=0`` asks for the pure-torch paths everywhere, or inside :func:`disabled`."""
    return not _DISABLED[0] and os.environ.get("MPNN_FUSED", "1") != "0"


@contextlib.contextmanager
def disabled():
    """Run the pure-torch paths inside this block (to compare them with the compiled ones)."""
    _DISABLED[0] += 1
    try:
        yield
    finally:
        _DISABLED[0] -= 1


def compiler() -> str | None:
    """The C++ compiler: ``$CXX``, else g++, else c++; None if there is none."""
    return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def build(name: str, source: str, cxx: str) -> Path:
    """Compile ``source`` into the cache (once per source, flags, compiler and host); the library's path."""
    key = hashlib.sha256("\0".join([source, cxx, *FLAGS, platform.node(), platform.machine()]).encode())
    folder = Path(os.environ.get("MPNN_CACHE_DIR", Path.home() / ".cache" / "mpnn")) / "fused"
    lib = folder / f"{name}_{key.hexdigest()[:16]}.so"
    if not lib.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src, out = Path(tmp) / f"{name}.cpp", Path(tmp) / f"{name}.so"
            src.write_text(source)
            subprocess.run([cxx, *FLAGS, str(src), "-o", str(out)], check=True, capture_output=True, timeout=300)
            os.replace(out, lib)
    return lib


def load(name: str, source: str, symbol: str, argtypes: list, restype=None):
    """The compiled ``symbol`` of ``source`` as a ctypes function, or None (disabled, no compiler,
    or the build failed). Loaded once per process."""
    if not enabled():
        return None
    if (name, symbol) not in _LOADED:
        cxx, fn = compiler(), None
        if cxx is not None:
            try:
                fn = getattr(ctypes.CDLL(str(build(name, source, cxx))), symbol)
                fn.argtypes, fn.restype = argtypes, restype
            except Exception:                              # a compiler that cannot build it: torch path
                fn = None
        _LOADED[(name, symbol)] = fn
    return _LOADED[(name, symbol)]


def report() -> dict:
    """What this process compiled and chose: kernel library -> loaded or not (for run manifests)."""
    return {"compiler": compiler(), "enabled": enabled(),
            "loaded": {f"{name}:{symbol}": fn is not None for (name, symbol), fn in sorted(_LOADED.items())}}
