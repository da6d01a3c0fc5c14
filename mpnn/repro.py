"""Reproducibility: seeding, determinism, device choice, and the run manifest of a chapter.

``start_run(chapter, globals())`` is the first call of every chapter. It checks the notebook's
parameters against its ``parameters`` cell, seeds every generator, switches torch to deterministic
algorithms and resolves ``device="auto"``. The returned :class:`Run` collects the chapter's claims
("the document says X / this book measured Y"); ``run.finish()`` shows them as a table, writes the
manifest ``_build/manifests/<chapter>.json`` (versions, git commit, device, profile, parameters,
duration, claim outcomes) and fails the chapter if a claim did not reproduce.
"""
from __future__ import annotations

import json
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import numpy as np
import torch

from . import notebooks, paths

VERSIONED_PACKAGES = ("mpnn", "torch", "torchvision", "numpy", "pandas", "scipy", "altair",
                      "papermill", "ipywidgets", "jupyter-book")


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device); optionally force determinism."""
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def spawn_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent child seeds of ``seed`` (``numpy.random.SeedSequence.spawn``).

    Use one per repeated run so runs are independent yet reproducible.
    """
    if n < 1:
        raise ValueError(f"need at least one seed, got n={n}")
    return [int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(n)]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; otherwise the named device, checked."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return dev


@contextmanager
def cpu_threads(n: int | None = 1, device: torch.device | str = "cpu"):
    """Run the block with ``n`` intra-op CPU threads, restoring the previous count afterwards.

    The book's models are small: splitting their matrices over threads costs more in
    synchronisation than it saves (many times more on a busy machine), and one thread also fixes
    the reduction order. ``n=None`` or a non-CPU ``device`` leaves torch's setting alone.
    """
    if n is None or torch.device(device).type != "cpu":
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in VERSIONED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.ROOT, capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=paths.ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    return f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


@dataclass
class Claim:
    id: str
    document: str
    measured: str
    passed: bool | None
    note: str = ""

    @property
    def outcome(self) -> str:
        return {True: "reproduced", False: "FAILED", None: "not tested"}[self.passed]


@dataclass
class Run:
    """One execution of a chapter: parameters, device, timing and claims."""

    chapter: str
    parameters: dict[str, Any]
    device: torch.device
    profile: str = field(default_factory=lambda: os.environ.get("MPNN_PROFILE", "interactive"))
    started: float = field(default_factory=time.time)
    claims: list[Claim] = field(default_factory=list)

    def claim(self, id: str, *, document: str, measured: str, passed: bool | None, note: str = "") -> Claim:
        """Record a claim: what the document says, what we measured, and whether it reproduced.

        ``passed=None`` means the claim cannot be tested at this profile; say why in ``note``.
        """
        if passed is not None:
            passed = bool(passed)
        if any(c.id == id for c in self.claims):
            raise ValueError(f"claim {id!r} recorded twice")
        c = Claim(id, document, measured, passed, note)
        self.claims.append(c)
        return c

    def claims_frame(self):
        import pandas as pd
        return pd.DataFrame([{"claim": c.id, "the document says": c.document,
                              "this book measured": c.measured, "outcome": c.outcome,
                              "note": c.note} for c in self.claims])

    def manifest(self) -> dict[str, Any]:
        return {
            "chapter": self.chapter,
            "profile": self.profile,
            "parameters": self.parameters,
            "device": str(self.device),
            "device_description": device_description(self.device),
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
            "duration_s": round(time.time() - self.started, 2),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "platform": platform.platform(),
            "claims": [asdict(c) | {"outcome": c.outcome} for c in self.claims],
        }

    def finish(self, display: bool = True) -> None:
        """Show the claims table, write the manifest, raise if a claim failed.

        The manifest written is kept as ``self.written`` (returning it would print it in the notebook).
        """
        if not self.claims:
            raise RuntimeError(f"{self.chapter}: no claims were recorded; every chapter asserts its claims")
        if display:
            from IPython.display import display as show
            show(self.claims_frame().style.hide(axis="index"))
        manifest = self.manifest()
        out = paths.manifest_dir()
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{self.chapter}.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        tmp.replace(target)
        failed = [c for c in self.claims if c.passed is False]
        if failed:
            lines = "\n".join(f"- {c.id}: document says {c.document!r}; measured {c.measured!r}" for c in failed)
            raise AssertionError(f"{self.chapter}: {len(failed)} claim(s) did not reproduce:\n{lines}")
        self.written = manifest


def start_run(chapter: str, namespace: dict[str, Any], *, deterministic: bool = True) -> Run:
    """Validate the chapter's parameters found in ``namespace``, seed everything, resolve the device.

    ``namespace`` is the notebook's ``globals()``: the names declared in the chapter's
    ``parameters`` cell are read from it and type-checked against their defaults.
    """
    declared = notebooks.declared_parameters(chapter)
    missing = [name for name in declared if name not in namespace]
    if missing:
        raise NameError(f"{chapter}: parameters {missing} are not defined; run the parameters cell first")
    params = {name: notebooks.check_value(chapter, name, namespace[name], default)
              for name, default in declared.items()}
    seed_everything(int(params.get("seed", 0)), deterministic=deterministic)
    threads = os.environ.get("MPNN_THREADS")  # set by the runner: cores // chapters running side by side
    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(params.get("device", "auto"))
    from . import plots
    plots.set_chapter(chapter)
    print(f"{chapter}: profile={os.environ.get('MPNN_PROFILE', 'interactive')} device={device} "
          f"torch={torch.__version__} python={sys.version.split()[0]}")
    return Run(chapter=chapter, parameters=params, device=device)
