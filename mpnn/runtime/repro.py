"""One run of a chapter: its context, its claims and its manifest.

``start_run(chapter, globals())`` is the first call of every chapter. The chapter's
:class:`RunContext` (chapter, profile, render mode, CPU threads, parameters) has one owner: the
runner (``python -m mpnn run``) builds it once, after validating every parameter, and hands it to
the kernel as the injected parameter ``mpnn_context``; in an interactive session, where no runner
exists, ``start_run`` builds it from the notebook's ``parameters`` cell itself. ``start_run`` then
seeds every generator, switches torch to deterministic algorithms, applies the thread policy and
resolves ``device="auto"``. The returned :class:`Run` collects the chapter's claims ("the document
says X / this book measured Y", each declaring the profile it needs); ``run.finish()`` shows them as
a table, writes the manifest ``_build/manifests/<chapter>.json`` (the only writer of that file:
versions, git commit, machine, device, context, duration, claims with their verdicts) and fails the
chapter if a verdict is not the one the chapter expects (:mod:`mpnn.runtime.verdicts`).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from typing import Any

import torch

from ..infra import paths
from ..infra.determinism import resolve_device, seed_everything
from . import notebooks, verdicts

VERSIONED_PACKAGES = ("mpnn", "torch", "torchvision", "numpy", "pandas", "scipy", "altair",
                      "papermill", "ipywidgets", "jupyter-book")


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


ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
             "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve")


def cpu_model_and_flags() -> tuple[str, list[str]]:
    """The CPU's model name and the ISA extensions among :data:`ISA_FLAGS` it reports (Linux's
    /proc/cpuinfo; elsewhere the platform's processor string and no flags)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8", errors="replace"):
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Model") and value.strip():
                model = value.strip()
            elif key in ("flags", "Features"):
                flags |= set(value.split())
    except OSError:
        pass
    return model, [f for f in ISA_FLAGS if f in flags]


def machine_description() -> dict[str, Any]:
    """Where the numbers of a run come from: CPU model and ISA flags, torch's kernels and threads,
    and which compiled kernels this process chose (:mod:`mpnn.infra.native`)."""
    model, flags = cpu_model_and_flags()
    info: dict[str, Any] = {
        "cpu_model": model, "isa_flags": flags, "machine": platform.machine(), "cpu_count": os.cpu_count(),
        "python": platform.python_version(), "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "mkl": torch.backends.mkl.is_available(), "mkldnn": torch.backends.mkldnn.is_available(),
    }
    try:
        from ..infra import native
        info["compiled_kernels"] = native.report()
    except Exception as exc:     # the description must never stop a run
        info["compiled_kernels"] = {"error": str(exc)}
    return info


PROFILE_ORDER = ("smoke", "default", "full")   # each profile runs everything the previous one does, larger


@dataclass(frozen=True)
class RunContext:
    """Everything about a run that is decided before its first cell (built once, by its one owner).

    ``profile`` is ``"interactive"`` in a Jupyter session: the parameters cell holds the default
    profile's values, so claims needing ``default`` are decided there too. ``render`` is
    ``"static"`` when the notebook is executed for the site, ``"live"`` in Jupyter. ``threads`` is
    the intra-op CPU thread count of the kernel (``None``: torch's own choice).
    """

    chapter: str
    profile: str = "interactive"
    render: str = "live"
    threads: int | None = None
    parameters: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.profile not in (*PROFILE_ORDER, "interactive"):
            raise ValueError(f"unknown profile {self.profile!r}; use one of {', '.join(PROFILE_ORDER)}")
        if self.render not in ("live", "static"):
            raise ValueError(f"render must be 'live' or 'static', got {self.render!r}")

    def as_parameter(self) -> dict[str, Any]:
        """The dict the runner injects as ``mpnn_context`` (papermill parameters are literals)."""
        return asdict(self)

    def reaches(self, needs: str) -> bool:
        """Does this run's profile include what a claim that ``needs`` that profile requires?"""
        if needs not in PROFILE_ORDER:
            raise ValueError(f"needs={needs!r}: use one of {', '.join(PROFILE_ORDER)}")
        rank = PROFILE_ORDER.index("default") if self.profile == "interactive" else PROFILE_ORDER.index(self.profile)
        return rank >= PROFILE_ORDER.index(needs)


_current = RunContext(chapter="scratch")


def current() -> RunContext:
    """The context of the run in this process (a live, interactive one before ``start_run``)."""
    return _current


@dataclass
class Claim:
    """One statement and its verdict (:mod:`mpnn.runtime.verdicts` defines the words)."""

    id: str
    kind: str
    document: str
    criterion: str
    measured: str
    verdict: str
    expected: str
    note: str = ""
    needs: str = "smoke"
    section: str = ""      # the heading of the section that shows it (the glance table links there)
    timing: bool = False   # the measurement is a time on the machine that runs the book

    @property
    def matches(self) -> bool:
        """The regression check: the run's verdict is the one the chapter expects (a claim this
        run cannot test matches anything; a timing claim may also be inconclusive)."""
        return verdicts.matches(asdict(self))


@dataclass
class Run:
    """One execution of a chapter: its context, device, timing and claims."""

    context: RunContext
    device: torch.device
    started: float = field(default_factory=time.time)
    claims: list[Claim] = field(default_factory=list)

    @property
    def chapter(self) -> str:
        return self.context.chapter

    @property
    def profile(self) -> str:
        return self.context.profile

    @property
    def parameters(self) -> dict[str, Any]:
        return self.context.parameters

    def claim(self, id: str, *, kind: str, document: str, criterion: str, measured, verdict,
              expected: str, needs: str = "smoke", note: str = "", section: str = "",
              timing: bool = False) -> Claim:
        """Record a claim: what the document says, the criterion, what we measured, the verdict.

        ``kind`` and the verdicts are the words of :mod:`mpnn.runtime.verdicts`. ``criterion`` is
        written before the number is seen. ``verdict`` is a verdict string or a bool (True:
        supported, False: not supported), or a callable returning one; ``expected`` is the verdict
        the chapter expects at ``needs`` and above, and :meth:`finish` fails the chapter when the
        run's verdict differs from it, in either direction.

        ``needs`` is the smallest profile at which the claim is decided (its seeds or sizes are
        too small below it). Below it the verdict is "not testable here" and neither ``verdict``
        nor ``measured`` is evaluated, so both may be callables reading numbers only that profile
        computes. ``section`` names the heading of the section that shows the result.

        ``timing=True`` marks a measurement that is a time on this machine: on another CPU its
        interval may straddle the threshold, so ``inconclusive`` is accepted too
        (:func:`verdicts.accepted`), never the opposite verdict; the chapter's prose about it must
        be generated from the run's verdict.
        """
        if any(c.id == id for c in self.claims):
            raise ValueError(f"claim {id!r} recorded twice")
        verdicts.check_kind(kind)
        verdicts.check_verdict(expected, "expected")
        if not criterion:
            raise ValueError(f"claim {id!r}: state the criterion (written before the number is seen)")
        if not self.context.reaches(needs):
            verdict = verdicts.UNDECIDED
            measured = "not measured at this profile"
            note = note or f"needs the {needs} profile"
        else:
            if callable(measured):
                measured = measured()
            if callable(verdict):
                verdict = verdict()
            verdict = verdicts.as_verdict(verdict)
        c = Claim(id, kind, document, criterion, str(measured), verdict, expected, note, needs, section, timing)
        self.claims.append(c)
        return c

    def claims_frame(self):
        import pandas as pd
        return pd.DataFrame([{"claim": c.id, "kind": c.kind, "the document says": c.document,
                              "criterion": c.criterion, "this book measured": c.measured,
                              "verdict": c.verdict, "expected": c.expected, "note": c.note}
                             for c in self.claims])

    def manifest(self) -> dict[str, Any]:
        return {
            "chapter": self.chapter,
            "profile": self.profile,
            "context": asdict(self.context),
            "parameters": self.parameters,
            "device": str(self.device),
            "device_description": device_description(self.device),
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
            "duration_s": round(time.time() - self.started, 2),
            "versions": package_versions(),
            "git_commit": git_commit(),
            "platform": platform.platform(),
            "machine": machine_description(),
            "claims": [asdict(c) | {"matches": c.matches} for c in self.claims],
        }

    def finish(self, display: bool = True) -> None:
        """Show the claims table, write the manifest, raise if a verdict is not the expected one.

        The manifest written is kept as ``self.written`` (returning it would print it in the notebook).
        """
        if not self.claims:
            raise RuntimeError(f"{self.chapter}: no claims were recorded; every chapter asserts its claims")
        if display:
            from IPython.display import HTML, display as show
            if self.context.render == "static":   # the site shows the table under the title
                show(HTML('<p class="mpnn-claims-pointer">Every claim, its criterion, measurement and verdict: '
                          'the verdict table at the top of this page.</p>'))
            else:
                show(HTML(verdicts.claims_table(asdict(c) for c in self.claims)))
        manifest = self.manifest()
        out = paths.manifest_dir()
        out.mkdir(parents=True, exist_ok=True)
        target = out / f"{self.chapter}.json"
        tmp = target.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(manifest, indent=2, default=str))
        tmp.replace(target)
        changed = [c for c in self.claims if not c.matches]
        if changed:
            lines = "\n".join(f"- {c.id}: expected {verdicts.expected_text(asdict(c))!r}, this run gives {c.verdict!r}; "
                              f"criterion {c.criterion!r}; measured {c.measured!r}" for c in changed)
            raise AssertionError(f"{self.chapter}: {len(changed)} verdict(s) changed; look at the evidence and "
                                 f"update the chapter (never the criterion to fit):\n{lines}")
        self.written = manifest


def interactive_context(chapter: str, namespace: dict[str, Any]) -> RunContext:
    """The context of a Jupyter session: the chapter's declared parameters read from ``namespace``."""
    declared = notebooks.declared_parameters(chapter)
    missing = [name for name in declared if name not in namespace]
    if missing:
        raise NameError(f"{chapter}: parameters {missing} are not defined; run the parameters cell first")
    params = {name: notebooks.check_value(chapter, name, namespace[name], default)
              for name, default in declared.items()}
    return RunContext(chapter=chapter, parameters=params, threads=notebooks.chapter_settings(chapter)["threads"])


def start_run(chapter: str, namespace: dict[str, Any], *, deterministic: bool = True) -> Run:
    """Take the run's context, seed everything, apply the thread policy, resolve the device.

    ``namespace`` is the notebook's ``globals()``. Under the runner it holds ``mpnn_context``
    (validated parameters included) and nothing is parsed again; in Jupyter the context is built
    from the notebook's ``parameters`` cell (:func:`interactive_context`).
    """
    global _current
    given = namespace.get("mpnn_context")
    if given is not None:
        context = RunContext(**given)
        if context.chapter != chapter:
            raise ValueError(f"start_run({chapter!r}) received the context of chapter {context.chapter!r}")
    else:
        context = interactive_context(chapter, namespace)
    _current = context
    seed_everything(int(context.parameters.get("seed", 0)), deterministic=deterministic)
    if context.threads:
        torch.set_num_threads(context.threads)
    device = resolve_device(context.parameters.get("device", "auto"))
    print(f"{chapter}: profile={context.profile} device={device} "
          f"torch={torch.__version__} python={sys.version.split()[0]}")
    return Run(context=context, device=device)
