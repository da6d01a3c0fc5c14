"""Small C++ kernels compiled at first use: g++ (or ``$CXX``), cached, loaded with ctypes, and used
only where they measure faster than torch on this machine.

A kernel is plain C++ over raw float/int arrays (no torch headers, so a build takes about a second).
:func:`load` compiles a source once per (source, flags, compiler, CPU model and ISA flags) into
``$MPNN_CACHE_DIR/fused`` (default ``~/.cache/mpnn/fused``, a folder only this user may write),
writing to a temporary name first and renaming it (a half-written library is never loaded), and
returns the ``extern "C"`` function with its ctypes signature -- or ``None`` where there is no
compiler, the build fails (one warning with the compiler's message), ``MPNN_FUSED=0``, or inside
:func:`disabled`. ``MPNN_FUSED=require`` turns a missing compiler or a failed build into an error
(CI sets it where a compiler exists, so kernel tests fail instead of skipping). ``MPNN_MARCH``
(default ``native``) is the ``-march`` the kernels are built for.

:func:`choose` is the measured choice between a compiled path and the torch path(s) for one kind
of shape, like cuDNN's benchmark mode: at first use it times every candidate a few times,
interleaved, keeps the fastest, and caches the choice on disk for this CPU. :func:`report` lists
the kernels loaded and the choices made with both speeds (run manifests record it).
Every caller keeps a pure-torch path for ``None``, and its tests run both.
"""
from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import platform
import shutil
import stat
import subprocess
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

_LOADED: dict[tuple[str, str], object] = {}
_DISABLED = [0]                                   # depth of open :func:`disabled` blocks
_CHOICES: dict[str, dict] = {}                     # kind|key -> {"chosen", "seconds": {candidate: s}}
_WARNED: set[str] = set()
_FRESH = False
SCREEN = 2.0     # a candidate whose first call takes more than this times the fastest's is not timed further
_FORCED: dict[str, str] = {}                       # kind -> candidate, inside :func:`forced`


class KernelBuildError(RuntimeError):
    """A compiled kernel could not be built while ``MPNN_FUSED=require``."""


def flags() -> list[str]:
    return ["-O3", f"-march={os.environ.get('MPNN_MARCH', 'native')}", "-shared", "-fPIC", "-std=c++17"]


def required() -> bool:
    return os.environ.get("MPNN_FUSED", "1") == "require"


def enabled() -> bool:
    """False when ``MPNN_FUSED=0`` asks for the pure-torch paths everywhere, or inside :func:`disabled`."""
    return not _DISABLED[0] and os.environ.get("MPNN_FUSED", "1") != "0"


def cpu_signature() -> str:
    """The CPU model and its ISA flags: what ``-march=native`` code depends on (not the host name)."""
    model, flags_seen = platform.processor() or platform.machine(), ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model") and value.strip():
                model = value.strip()
            elif key.strip() in ("flags", "Features") and not flags_seen:
                flags_seen = " ".join(sorted(value.split()))
    except OSError:
        pass
    return f"{platform.machine()}|{model}|{flags_seen}"


def cache_dir() -> Path:
    """The kernel cache, created for this user only; refused if others may write to it."""
    folder = Path(os.environ.get("MPNN_CACHE_DIR", Path.home() / ".cache" / "mpnn")) / "fused"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = folder.stat()
    if (hasattr(os, "getuid") and st.st_uid != os.getuid()) or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise PermissionError(f"the kernel cache {folder} is writable by other users (or not ours): "
                              f"remove it or set MPNN_CACHE_DIR to a private folder")
    return folder


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


def _compiler_version(cxx: str) -> str:
    try:
        return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.split("\n")[0]
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build(name: str, source: str, cxx: str) -> Path:
    """Compile ``source`` into the cache (once per source, flags, compiler and CPU); the library's path.
    Raises ``subprocess.CalledProcessError`` (with the compiler's output) when the build fails."""
    key = hashlib.sha256("\0".join([source, cxx, _compiler_version(cxx), *flags(), cpu_signature()]).encode())
    folder = cache_dir()
    lib = folder / f"{name}_{key.hexdigest()[:16]}.so"
    if not lib.exists():
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            src, out = Path(tmp) / f"{name}.cpp", Path(tmp) / f"{name}.so"
            src.write_text(source)
            subprocess.run([cxx, *flags(), str(src), "-o", str(out)], check=True, capture_output=True,
                           text=True, timeout=300)
            os.replace(out, lib)
    return lib


def source(filename: str) -> str:
    """The text of a kernel's C++ file shipped with the package (``mpnn/kernels/<filename>``)."""
    return (Path(__file__).parent.parent / "kernels" / filename).read_text()


def _failed(name: str, why: str) -> None:
    """One warning per kernel library (an error under ``MPNN_FUSED=require``)."""
    if required():
        raise KernelBuildError(f"kernel {name!r} is required (MPNN_FUSED=require) but {why}")
    if name not in _WARNED:
        _WARNED.add(name)
        warnings.warn(f"mpnn: kernel {name!r} is not used, {why}; the torch path runs instead", RuntimeWarning,
                      stacklevel=3)


def load(name: str, source: str, symbol: str, argtypes: list, restype=None):
    """The compiled ``symbol`` of ``source`` as a ctypes function, or None (disabled, no compiler,
    or the build failed). Loaded once per process."""
    if not enabled():
        return None
    if (name, symbol) not in _LOADED:
        cxx, fn = compiler(), None
        if cxx is None:
            _failed(name, "no C++ compiler was found (install g++ or set $CXX)")
        else:
            try:
                fn = getattr(ctypes.CDLL(str(build(name, source, cxx))), symbol)
                fn.argtypes, fn.restype = argtypes, restype
            except subprocess.CalledProcessError as exc:
                _failed(name, f"{cxx} failed to build it:\n{(exc.stderr or '').strip()[-2000:]}")
            except (OSError, AttributeError, PermissionError, subprocess.SubprocessError) as exc:
                _failed(name, f"it could not be built or loaded: {exc}")
        _LOADED[(name, symbol)] = fn
    return _LOADED[(name, symbol)]


# ---------------------------------------------------------------- measured choices

def _choices_file() -> Path:
    digest = hashlib.sha256("\0".join([cpu_signature(), *flags(), os.environ.get("ATEN_CPU_CAPABILITY", ""),
                                        str(_torch_threads())]).encode()).hexdigest()[:16]
    return cache_dir() / f"choices_{digest}.json"


def _torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def _stored() -> dict:
    try:
        return json.loads(_choices_file().read_text())
    except (OSError, ValueError):
        return {}


def _store(entry_key: str, entry: dict) -> None:
    try:
        path = _choices_file()
        data = _stored() | {entry_key: entry}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, path)
    except OSError:                 # a read-only cache: the choice still holds for this process
        pass


def choose(kind: str, key: Any, candidates: dict[str, Callable[[], Any]] | Callable[[], dict], *,
           names: list[str] | None = None, repeats: int = 5, margin: float = 0.95,
           min_time: float = 0.01) -> str:
    """The fastest of ``candidates`` (name -> zero-argument callable running that path once) for
    this ``kind`` of computation and shape ``key``, measured at first use on this machine.

    Each candidate runs once to warm up; that call also sets how many calls make one sample of at
    least ``min_time`` seconds, and screens out a candidate that takes more than :data:`SCREEN`
    times the fastest's (its one call stands as its time). The rest run ``repeats`` interleaved
    rounds (a b c, c b a, ...): a load that drifts slows every candidate of a round alike. The median seconds per call decide. A candidate
    whose name starts with ``torch`` is torch-only; a compiled one is chosen only when its median is
    below ``margin`` times the fastest torch-only one's (default: at least 5% faster, so the path
    taken is never measurably slower than torch's own by more than the timing noise). The choice and every median are kept for this process and stored in the kernel
    cache for this CPU, flags and thread count (``MPNN_RECHOOSE=1``, or :func:`fresh_choices`,
    measures again). ``candidates`` may be a zero-argument function returning the dict (give its
    keys as ``names``), so that a caller's set-up for measuring (copies of its inputs) runs only when
    a choice is measured, never on the calls that find it made."""
    lazy = callable(candidates)
    if lazy and names is None:
        raise ValueError("choose(): give the candidates' names with a lazy candidates function")
    valid = set(names) if lazy else set(candidates)
    if _FORCED.get(kind) in valid:
        return _FORCED[kind]
    entry_key = f"{kind}|{json.dumps(key, default=str)}"
    if entry_key in _CHOICES:
        return _CHOICES[entry_key]["chosen"]
    fresh = _FRESH or os.environ.get("MPNN_RECHOOSE") == "1"
    stored = None if fresh else _stored().get(entry_key)
    if stored and stored.get("chosen") in valid:
        _CHOICES[entry_key] = stored | {"source": "cache"}
        return stored["chosen"]
    if lazy:
        candidates = candidates()
    import torch

    from .clock import interleaved_samples, median
    with torch.random.fork_rng(devices=[]):     # measuring draws no numbers from the caller's generator
        once = {}
        for n, fn in candidates.items():         # one call each: the warm-up, and a screen
            t0 = time.perf_counter()
            fn()
            once[n] = time.perf_counter() - t0
        best = min(once.values())
        torch_best = min((n for n in once if n.startswith("torch")), key=once.get, default=None)
        kept = {n: fn for n, fn in candidates.items() if once[n] <= SCREEN * best or n == torch_best}
        med = {n: median(v) for n, v in interleaved_samples(kept, repeats=repeats, warmup=0, min_time=min_time,
                                                            once=once).items()}
        med |= {n: once[n] for n in candidates if n not in kept}      # screened out: one call's time
    names = list(med)
    fastest = min(names, key=med.get)
    torch_only = [n for n in names if n.startswith("torch")]
    chosen = fastest
    if torch_only and not fastest.startswith("torch"):
        best_torch = min(torch_only, key=med.get)
        if med[fastest] >= margin * med[best_torch]:
            chosen = best_torch
    entry = {"kind": kind, "key": key, "chosen": chosen, "seconds": med, "repeats": repeats}
    _CHOICES[entry_key] = entry | {"source": "measured"}
    _store(entry_key, entry)
    return chosen


@contextlib.contextmanager
def fresh_choices():
    """Inside this block every :func:`choose` measures again (once per kind and shape) and stores
    the new choice: the benchmark run, which has the machine to itself, refreshes choices that a
    busy moment may have skewed."""
    global _FRESH
    before, saved = _FRESH, dict(_CHOICES)
    _FRESH = True
    _CHOICES.clear()
    try:
        yield
    finally:
        _FRESH = before
        fresh = dict(_CHOICES)
        _CHOICES.clear()
        _CHOICES.update(saved | fresh)


@contextlib.contextmanager
def forced(kind: str, candidate: str):
    """Inside this block :func:`choose` answers ``candidate`` for ``kind`` without measuring (tests
    of one path, and benchmarks that time each path on purpose)."""
    before = _FORCED.get(kind)
    _FORCED[kind] = candidate
    try:
        yield
    finally:
        if before is None:
            _FORCED.pop(kind, None)
        else:
            _FORCED[kind] = before


def report() -> dict:
    """What this process compiled and chose (for run manifests and the Performance page)."""
    return {"compiler": compiler(), "enabled": enabled(), "march": os.environ.get("MPNN_MARCH", "native"),
            "loaded": {f"{name}:{symbol}": fn is not None for (name, symbol), fn in sorted(_LOADED.items())},
            "choices": [dict(v) for v in _CHOICES.values()]}
