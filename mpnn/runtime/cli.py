"""Command line: execute chapters with papermill, build the offline site, run benchmarks.

    python -m mpnn list
    python -m mpnn run [CHAPTER ...] --profile smoke|default|full [-p NAME VALUE ...] [--keep-going] [--jobs N]
    python -m mpnn build
    python -m mpnn bench [--quick] [--only PATTERN]
    python -m mpnn timing [--repeats 5] [--load 1] [--only PATTERN]

``run`` validates every chapter, profile block and ``-p`` override against the notebooks'
``parameters`` cells *before* executing anything, then executes each notebook of ``book/`` into
``_build/src/book/`` (the committed notebooks stay stripped). A failing chapter is reported with its
cell and error; its partial notebook goes to ``_build/failed/`` and no executed copy that looks
complete is left in the site source. With ``--jobs N`` up to N chapters execute side by side, each
kernel on ``cores // N`` CPU threads; code cells tagged ``timing`` run alone (:class:`CellGate`), so
the timing claims are measured on a machine that no other chapter is loading. When the performance page is among the chapters, the benchmark harness runs first, alone, and
writes ``_build/bench/results.json``, which the page reads. ``build`` turns ``_build/src`` into ``_build/html`` with
jupyter-book (no re-execution, warnings are errors) and copies in the JavaScript the site serves; before
that :func:`mpnn.runtime.site.stage_site` adds each chapter's "at a glance" box (from its manifest),
links under every chart to its SVG/PNG/Vega-Lite files, the findings page and the introduction's counts,
and :func:`mpnn.runtime.subpages.site_tree` writes the tree jupyter-book builds (``_build/site``), with
each long chapter split into the parts its notebook metadata names.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import yaml

from ..infra import paths
from . import bench, notebooks
from .notebooks import ChapterError

VENDOR = {  # file in the site's _static (staged in _build/src/_vendor) -> source in node_modules
    "vega.min.js": "vega/build/vega.min.js",
    "vega-lite.min.js": "vega-lite/build/vega-lite.min.js",
    "vega-embed.min.js": "vega-embed/build/vega-embed.min.js",
    "mathjax": "mathjax/es5",
}
# MathJax: the pages load tex-chtml.js (the TeX input, CommonHTML output and the menu in one file),
# which fetches its fonts and, on demand, TeX extensions and the menu's accessibility parts; the
# other combined builds, the SVG output and the speech engine are never requested.
MATHJAX_UNUSED = ("tex-chtml-full*.js", "tex-mml-*.js", "tex-svg*.js", "mml-*.js", "node-main.js", "latest.js",
                  "svg", "svg.js", "sre", "mml", "asciimath.js", "tex-full.js")


def src_dir() -> Path:
    return paths.build_dir() / "src"


def failed_dir() -> Path:
    return paths.build_dir() / "failed"


# ---------------------------------------------------------------- planning (no side effects)

def parse_overrides(pairs: list[list[str]]) -> dict[str | None, dict[str, Any]]:
    """``-p NAME VALUE`` (all chapters) or ``-p CHAPTER:NAME VALUE``; values parsed as YAML."""
    out: dict[str | None, dict[str, Any]] = {}
    for name, raw in pairs:
        chapter, _, pname = name.rpartition(":")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ChapterError(f"-p {name}: cannot parse value {raw!r} ({exc})") from exc
        out.setdefault(chapter or None, {})[pname] = value
    return out


def plan(chapters: list[str], profile: str, overrides: dict[str | None, dict[str, Any]]) -> list[tuple[str, dict]]:
    """Validate everything up front; return ``[(chapter, parameters)]`` to execute."""
    valid = notebooks.chapters()
    unknown = [c for c in chapters if c not in valid]
    if unknown:
        raise ChapterError(f"unknown chapter(s) {', '.join(unknown)}; valid chapters: {', '.join(valid)}")
    targeted = [c for c in overrides if c is not None and c not in (chapters or valid)]
    if targeted:
        raise ChapterError(f"-p targets chapter(s) {', '.join(targeted)} that are not being run")
    blocks = notebooks.load_profile(profile)
    jobs = []
    for chapter in chapters or valid:
        params = dict(blocks.get(chapter, {}))
        params.update(overrides.get(None, {}))
        params.update(overrides.get(chapter, {}))
        jobs.append((chapter, notebooks.resolve_parameters(chapter, params)))
    return jobs


# ---------------------------------------------------------------- staging and execution

def stage_sources() -> Path:
    """Copy the book's non-notebook sources and the vendored JavaScript into ``_build/src``."""
    src = src_dir()
    (src / "book").mkdir(parents=True, exist_ok=True)
    for name in ("_config.yml", "_toc.yml"):
        shutil.copyfile(paths.ROOT / name, src / name)
    for item in paths.BOOK.iterdir():
        if item.suffix in (".md", ".bib", ".png", ".svg", ".css"):
            shutil.copyfile(item, src / "book" / item.name)
    static = paths.BOOK / "_static"
    if static.is_dir():
        shutil.copytree(static, src / "_static", dirs_exist_ok=True)
    node_modules = paths.ROOT / "node_modules"
    vendor = src / "_vendor"
    for target, source in VENDOR.items():
        origin = node_modules / source
        if not origin.exists():
            raise FileNotFoundError(
                f"{origin} is missing: the site serves its own copy of it. Run `npm ci` in {paths.ROOT} "
                f"(the Makefile does this) and try again.")
        dest = vendor / target
        dest.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            ignore = shutil.ignore_patterns(*MATHJAX_UNUSED) if target == "mathjax" else None
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(origin, dest, ignore=ignore)
        else:
            shutil.copyfile(origin, dest)
    from . import site
    site.write_assets(vendor)
    (src / "_figures").mkdir(exist_ok=True)   # the site's html_extra_path (figure files, see site.stage_figures)
    return src


TIMING_TAG = "timing"


class CellGate:
    """A readers-writer gate over the code cells of chapters executing side by side.

    Ordinary cells share the machine; a cell tagged ``timing`` runs alone. When a timing cell
    starts, the kernels of the other chapters that may be paused (their whole process trees) are
    suspended (SIGSTOP) until it ends, so it neither waits for their long training cells nor shares
    the CPU with them; a chapter that may not be paused (its notebook metadata says
    ``"mpnn": {"pause_for_timing": false}``, e.g. processes with wall-clock timeouts) is waited for
    instead. While a timing cell waits or runs no new cell starts (the writer has priority).
    One slot per chapter: :meth:`Slot.enter` before a cell, :meth:`Slot.leave` after it
    (idempotent, so a cell that died still lets go).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: set["CellGate.Slot"] = set()   # slots executing an ordinary cell
        self._exclusive: "CellGate.Slot | None" = None
        self._waiting = 0                              # timing cells waiting
        self._paused: list["CellGate.Slot"] = []
        self.slots: list["CellGate.Slot"] = []
        self.aborted = False
        self.log: list[tuple[float, str, str]] = []   # (time, chapter, event)

    def abort(self) -> None:
        """Stop everything now (Ctrl-C): no cell may start, every suspended kernel is resumed, and
        every kernel's process tree is killed (the chapters' threads then end with an error)."""
        import psutil
        with self._cond:
            self.aborted = True
            for s in self._paused:
                s._signal(stop=False)
            self._paused = []
            self._cond.notify_all()
        for s in self.slots:
            procs = s._processes()
            for proc in procs:
                try:
                    proc.resume()
                except psutil.NoSuchProcess:
                    pass
            for proc in reversed(procs):
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    pass
            psutil.wait_procs(procs, timeout=5)

    class Slot:
        def __init__(self, gate: "CellGate", chapter: str, pausable: bool = False) -> None:
            self.gate, self.chapter, self.pausable, self.held = gate, chapter, pausable, None
            self.client = None   # the chapter's notebook client (set by the engine): its kernel is paused

        def _processes(self):
            import psutil
            pid = getattr(getattr(getattr(self.client, "km", None), "provisioner", None), "pid", None)
            if pid is None:
                return []
            try:
                root = psutil.Process(pid)
                return [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return []

        def can_pause(self) -> bool:
            return self.pausable and bool(self._processes())

        def _signal(self, stop: bool) -> None:
            import psutil
            for proc in self._processes():
                try:
                    proc.suspend() if stop else proc.resume()
                except psutil.NoSuchProcess:
                    pass

        def enter(self, exclusive: bool) -> None:
            self.leave()
            g = self.gate
            with g._cond:
                if g.aborted:
                    raise KeyboardInterrupt("the run was interrupted")
                if exclusive:
                    g._waiting += 1
                    g._cond.wait_for(lambda: g.aborted or (g._exclusive is None
                                     and all(s.can_pause() for s in g._running if s is not self)))
                    g._waiting -= 1
                    if g.aborted:
                        raise KeyboardInterrupt("the run was interrupted")
                    g._exclusive = self
                    g._paused = [s for s in g._running if s is not self]
                    for s in g._paused:
                        s._signal(stop=True)
                        g.log.append((time.time(), s.chapter, "paused"))
                    g.log.append((time.time(), self.chapter, "enter-timing"))
                else:
                    g._cond.wait_for(lambda: g.aborted or (g._exclusive is None and g._waiting == 0))
                    if g.aborted:
                        raise KeyboardInterrupt("the run was interrupted")
                    g._running.add(self)
            self.held = "exclusive" if exclusive else "shared"

        def leave(self) -> None:
            if self.held is None:
                return
            g = self.gate
            with g._cond:
                if self.held == "exclusive":
                    for s in g._paused:
                        s._signal(stop=False)
                        g.log.append((time.time(), s.chapter, "resumed"))
                    g._paused = []
                    g._exclusive = None
                    g.log.append((time.time(), self.chapter, "leave-timing"))
                else:
                    g._running.discard(self)
                g._cond.notify_all()
            self.held = None

    def slot(self, chapter: str, pausable: bool = False) -> "CellGate.Slot":
        slot = CellGate.Slot(self, chapter, pausable)
        self.slots.append(slot)
        return slot


def _engine() -> str:
    """Register (once) a papermill engine that hands its notebook client to the chapter's gate slot."""
    import logging
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.utils import merge_kwargs, remove_args

    class GatedEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, stdout_file=None,
                                     stderr_file=None, start_timeout=60, execution_timeout=None, **kwargs):
            slot = kwargs.pop("mpnn_slot", None)
            kwargs = remove_args(["input_path"], **kwargs)
            safe_kwargs = remove_args(["timeout", "startup_timeout"], **kwargs)
            final_kwargs = merge_kwargs(safe_kwargs, timeout=execution_timeout or kwargs.get("timeout"),
                                        startup_timeout=start_timeout, kernel_name=kernel_name,
                                        log=logging.getLogger("papermill"), log_output=log_output,
                                        stdout_file=stdout_file, stderr_file=stderr_file)
            client = PapermillNotebookClient(nb_man, **final_kwargs)
            if slot is not None:
                slot.client = client
            return client.execute()

    if "mpnn-gated" not in papermill_engines._engines:
        papermill_engines.register("mpnn-gated", GatedEngine)
    return "mpnn-gated"


def kernel_env() -> dict[str, str]:
    """Environment of the chapter kernels: no progress widgets (everything else is in their context)."""
    # TQDM_DISABLE: progress bars inside the kernel would land in the site as widgets or stderr noise.
    return {"TQDM_DISABLE": "1"}


def run_context(chapter: str, params: dict[str, Any], profile: str, threads: int | None) -> dict[str, Any]:
    """The kernel's whole context, built once here and injected as the parameter ``mpnn_context``."""
    from .repro import RunContext
    full = notebooks.declared_parameters(chapter) | params
    own = notebooks.chapter_settings(chapter)["threads"]   # a chapter's declared need wins
    return RunContext(chapter=chapter, profile=profile, render="static", threads=own or threads,
                      parameters=full).as_parameter()


class _KnownContextParameter(logging.Filter):
    """papermill warns about injected names missing from the parameters cell; ``mpnn_context`` is meant."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Passed unknown parameter: mpnn_context" not in record.getMessage()


logging.getLogger("papermill").addFilter(_KnownContextParameter())


@contextmanager
def environment(env: dict[str, str]):
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def execute(chapter: str, params: dict[str, Any], profile: str, *, gate: CellGate | None = None,
            threads: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Execute one chapter; returns its outcome record (never leaves a complete-looking failure).

    ``params`` are the validated overrides (:func:`plan`); the kernel gets them with its context
    (:func:`run_context`). With a ``gate``, every code cell passes it (cells tagged ``timing``
    alone); the caller then sets the kernels' environment (:func:`kernel_env`), otherwise this
    function does. The chapter's manifest is written by its kernel alone; the runner's record
    goes to ``_build/run.json``.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = paths.BOOK / f"{chapter}.ipynb"
    final = src_dir() / "book" / f"{chapter}.ipynb"
    partial = final.with_suffix(".partial.ipynb")
    failed = failed_dir() / f"{chapter}.ipynb"
    manifest = paths.manifest_dir() / f"{chapter}.json"
    for stale in (final, partial, failed, manifest):
        stale.unlink(missing_ok=True)
    for stale_dir in (paths.figure_dir(chapter), paths.build_dir() / "timing" / chapter):
        shutil.rmtree(stale_dir, ignore_errors=True)   # figures and timing claims of an earlier run
    final.parent.mkdir(parents=True, exist_ok=True)
    env = environment(kernel_env()) if gate is None else nullcontext()
    slot = gate.slot(chapter, pausable=notebooks.chapter_settings(chapter)["pause_for_timing"]) if gate is not None else None
    hooks = {}
    if slot is not None:
        hooks = {"on_cell_execute": lambda cell, cell_index: slot.enter(TIMING_TAG in cell.metadata.get("tags", [])),
                 "on_cell_executed": lambda cell, cell_index, execute_reply: slot.leave(),
                 "engine_name": _engine(), "mpnn_slot": slot}
    start = time.time()
    record: dict[str, Any] = {"chapter": chapter, "profile": profile, "overrides": params}
    try:
        with env:
            pm.execute_notebook(str(source), str(partial), cwd=str(paths.BOOK),
                                parameters=params | {"mpnn_context": run_context(chapter, params, profile, threads)},
                                kernel_name="python3",
                                progress_bar={"desc": chapter, "leave": True, "disable": not progress},
                                request_save_on_cell_execute=False, log_output=False, **hooks)
        strip_widget_outputs(partial)
        from . import site
        site.decorate(partial, chapter)      # at a glance box from the manifest just written, figure links
        partial.replace(final)
        record["status"] = "ok"
    except PapermillExecutionError as exc:
        failed.parent.mkdir(parents=True, exist_ok=True)
        if partial.exists():
            partial.replace(failed)
        first_line = (exc.source or "").strip().splitlines()[:1]
        record.update(status="failed", cell=exc.exec_count, cell_source=first_line[0] if first_line else "",
                      error=f"{exc.ename}: {exc.evalue}")
    except BaseException as exc:
        partial.unlink(missing_ok=True)
        record.update(status="failed", cell=None, error=f"{type(exc).__name__}: {exc}")
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        if slot is not None:
            slot.leave()
        record["runner_duration_s"] = round(time.time() - start, 2)
    return record


WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def strip_widget_outputs(notebook: Path) -> int:
    """Drop live-widget outputs (notebook progress bars) and widget state from an executed notebook.

    The site has no kernel behind it: a widget output would make jupyter-book load require.js and the
    widget manager from a CDN and render an empty box. Explorers already show a static view in site
    runs; what remains are ``tqdm.notebook`` bars, which carry no result. Returns how many went.
    """
    import nbformat
    nb = nbformat.read(notebook, as_version=4)
    dropped = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        kept = [o for o in cell.outputs if WIDGET_MIME not in o.get("data", {})]
        dropped += len(cell.outputs) - len(kept)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, notebook)
    return dropped


def default_jobs() -> int:
    """Chapters side by side: one per CPU core (the chapters' kernels run on one thread each)."""
    return max(1, os.cpu_count() or 1)


def run_benchmarks(chapter: str, params: dict[str, Any], report=print) -> float:
    """Run the harness for ``chapter`` (the page that shows it: notebook metadata ``mpnn.benchmarks``,
    whose parameters ``quick``, ``only``, ``threads`` it takes) and write ``_build/bench/results.json``;
    returns seconds."""
    settings = notebooks.declared_parameters(chapter) | params
    start = time.time()
    results = bench.run_all(quick=settings["quick"], only=settings["only"] or None, threads=settings["threads"])
    if not settings["quick"]:   # the page also shows how close the CI's quick sizes get to the machine's limit
        results["quick_run"] = bench.run_all(quick=True, only=settings["only"] or None, threads=settings["threads"])
    bench.write_results(results)
    report(f"ok benchmarks for {chapter} ({time.time() - start:.0f} s, {len(results['results'])} measurements)")
    return time.time() - start


def run_chapters(jobs: list[tuple[str, dict]], profile: str, n_jobs: int = 1, keep_going: bool = False,
                 report=print) -> list[dict[str, Any]]:
    """Execute ``jobs`` with up to ``n_jobs`` chapters side by side; returns their outcome records.

    Chapters whose notebook metadata says ``mpnn.run_last`` (they read the others' manifests) start
    once every other chapter has finished; the benchmark harness of a chapter with
    ``mpnn.benchmarks`` runs first, alone. After a failure
    without ``keep_going`` no new chapter starts (those running finish).
    """
    if n_jobs < 1:
        raise ChapterError(f"--jobs must be >= 1, got {n_jobs}")
    from tqdm.auto import tqdm
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    gate = CellGate()
    run_last = {c for c, _ in jobs if notebooks.chapter_settings(c)["run_last"]}
    first = [j for j in jobs if j[0] not in run_last]
    last = [j for j in jobs if j[0] in run_last]
    records: list[dict[str, Any]] = []
    stop = threading.Event()
    bar = tqdm(total=len(jobs), desc=f"chapters ({profile}, {n_jobs} at a time)", unit="chapter")

    def one(job):
        chapter, params = job
        if stop.is_set():
            return None
        record = execute(chapter, params, profile, gate=gate, threads=threads, progress=n_jobs == 1)
        bar.update(1)
        if record["status"] != "ok":
            where = (f"cell [{record['cell']}] `{record.get('cell_source', '')}`" if record.get("cell")
                     else "before the first cell")
            report(f"\nFAILED {chapter} ({where}): {record['error']}\n"
                   f"  partial notebook: {failed_dir() / (chapter + '.ipynb')}")
            if not keep_going:
                stop.set()
        else:
            report(f"ok {chapter} ({record['runner_duration_s']:.0f} s)")
        return record

    start = time.time()
    bench_s = None
    bench_jobs = [(chapter, params) for chapter, params in jobs if notebooks.chapter_settings(chapter)["benchmarks"]]
    if bench_jobs:   # before any chapter: the harness times kernels on an otherwise idle machine
        bench.results_path().unlink(missing_ok=True)
        try:
            bench_s = run_benchmarks(*bench_jobs[0], report=report)
        except Exception as exc:   # the page then fails with "no results"; the other chapters still run
            report(f"\nFAILED benchmarks for {bench_jobs[0][0]}: {type(exc).__name__}: {exc}")
    with environment(kernel_env()):
        for batch in (first, last):
            pool = ThreadPoolExecutor(max_workers=n_jobs)
            futures = [pool.submit(one, job) for job in batch]
            try:
                while not all(f.done() for f in futures):   # the main thread stays free for Ctrl-C
                    wait(futures, timeout=0.5)
            except KeyboardInterrupt:
                stop.set()
                gate.abort()                                  # resume suspended kernels, kill every kernel
                pool.shutdown(wait=True, cancel_futures=True)
                records += [f.result() for f in futures if f.done() and not f.cancelled() and f.exception() is None
                            and f.result() is not None]
                write_run_record(profile, n_jobs, threads, time.time() - start, records, gate, bench_s,
                                 interrupted=True)
                bar.close()
                raise
            pool.shutdown(wait=True)
            records += [r for r in (f.result() for f in futures) if r is not None]
            if batch is first:  # what the reproducibility report shows about this run as a whole
                write_run_record(profile, n_jobs, threads, time.time() - start, records, gate, bench_s)
    bar.close()
    return records


def run_record_path() -> Path:
    return paths.build_dir() / "run.json"


def write_run_record(profile: str, n_jobs: int, threads: int, wall_s: float, records: list[dict],
                     gate: CellGate, bench_s: float | None = None, interrupted: bool = False) -> None:
    """``_build/run.json``: profile, chapters side by side, wall time and time spent in timing cells."""
    timing_s, opened = 0.0, {}
    for t, chapter, what in gate.log:
        if what not in ("enter-timing", "leave-timing"):
            continue
        if what == "enter-timing":
            opened[chapter] = t
        elif chapter in opened:
            timing_s += t - opened.pop(chapter)
    data = {"profile": profile, "jobs": n_jobs, "threads_per_chapter": threads, "cpu_count": os.cpu_count(),
            "wall_s": round(wall_s, 1), "timing_cells_alone_s": round(timing_s, 1),
            "bench_s": None if bench_s is None else round(bench_s, 1), "interrupted": interrupted,
            "chapters": {r["chapter"]: {k: v for k, v in r.items() if k != "chapter"} | {"duration_s": r["runner_duration_s"]}
                         for r in records}}
    path = run_record_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)


def cmd_run(args) -> int:
    overrides = parse_overrides(args.param or [])
    jobs = plan(args.chapters, args.profile, overrides)  # raises before anything runs
    n_jobs = args.jobs if args.jobs is not None else default_jobs()
    stage_sources()
    start = time.time()
    try:
        records = run_chapters(jobs, args.profile, n_jobs, args.keep_going)
    except KeyboardInterrupt:
        print(f"\ninterrupted after {time.time() - start:.0f} s: every chapter kernel was stopped; "
              f"{run_record_path().relative_to(paths.ROOT) if run_record_path().is_relative_to(paths.ROOT) else run_record_path()} "
              f"records what finished", file=sys.stderr)
        return 130
    failures = [r for r in records if r["status"] != "ok"]
    print(f"{len(records)} chapter(s) in {time.time() - start:.0f} s, {n_jobs} at a time")
    if failures or len(records) < len(jobs):
        print(f"{len(failures)} chapter(s) failed: {', '.join(r['chapter'] for r in failures)}"
              + (f"; {len(jobs) - len(records)} not started" if len(records) < len(jobs) else ""), file=sys.stderr)
        return 1
    return 0


def cmd_build(args) -> int:
    src = stage_sources()
    missing = [c for c in notebooks.toc_entries()
               if not (src / "book" / f"{c}.ipynb").exists() and not (src / "book" / f"{c}.md").exists()]
    if missing:
        raise ChapterError(f"chapter(s) not executed yet: {', '.join(missing)}. "
                           f"Run `python -m mpnn run --profile default` (or `make book`) first.")
    from . import site
    staged = site.stage_site(src)
    out = paths.build_dir()
    from . import subpages
    parts = subpages.site_tree(src, out / "site")
    api = parts.pop("api", [])
    print(f"site: {len(staged['decorated'])} chapter page(s) with their at a glance box, "
          f"{staged['pngs']} figure PNG(s) rendered, {sum(map(len, parts.values()))} part page(s) "
          f"of {len(parts)} long chapter(s), {len(api)} API reference page(s)")
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(out / "site"), "--path-output", str(out.parent),
           "--builder", "html", "-W", "-n", "--keep-going"]
    if out.name != "_build":
        raise ChapterError("jupyter-book writes to <path-output>/_build; keep MPNN_BUILD_DIR named _build")
    result = subprocess.run(cmd)
    if result.returncode != 0:
        print("site build failed (warnings count as errors)", file=sys.stderr)
        return result.returncode
    pruned = site.prune(out / "html")
    print(f"site: {out / 'html' / 'index.html'} ({site.size_mb(out / 'html'):.1f} MB; "
          f"{pruned / 1e6:.1f} MB of theme source maps, catalogues and executed notebook copies left out)")
    return 0


def cmd_list(args) -> int:
    for chapter in notebooks.chapters():
        params = notebooks.declared_parameters(chapter)
        print(f"{chapter}: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
    return 0


def cmd_bench(args) -> int:
    results = bench.run_all(quick=args.quick, only=args.only, threads=args.threads)
    path = bench.write_results(results)
    print(f"benchmarks: {path}")
    return 0


def cmd_timing(args) -> int:
    from . import timing
    rows = timing.replay_all(repeats=args.repeats, load=args.load, only=args.only)
    width = max(len(f"{r['chapter']}/{r['claim']}") for r in rows)
    for r in rows:
        print(f"{r['chapter'] + '/' + r['claim']:<{width}}  #{r['repetition']}  "
              f"{'passed' if r['passed'] else 'FAILED'}  {r['measured']}")
    failed = [r for r in rows if not r["passed"]]
    print(f"{len(rows) - len(failed)}/{len(rows)} replays passed with {args.load} busy process(es); "
          f"{timing.timing_dir() / 'robustness.json'}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpnn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute chapters with papermill")
    run.add_argument("chapters", nargs="*", metavar="CHAPTER", help="chapters to run (default: all)")
    run.add_argument("--profile", default="default", help="smoke | default | full")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="override a parameter (NAME or CHAPTER:NAME); VALUE is parsed as YAML")
    run.add_argument("--keep-going", action="store_true", help="run the remaining chapters after a failure")
    run.add_argument("--jobs", "-j", type=int, default=None,
                     help="chapters side by side (default: one per CPU core); cells tagged 'timing' run alone")
    sub.add_parser("build", help="build the site from the executed chapters")
    sub.add_parser("list", help="list chapters and their parameters")
    bench_p = sub.add_parser("bench", help="run the benchmark harness")
    bench_p.add_argument("--quick", action="store_true", help="small sizes (CI)")
    bench_p.add_argument("--only", default=None, help="run cases whose name contains this text")
    bench_p.add_argument("--threads", type=int, default=1, help="CPU threads for every case (default 1)")
    tim = sub.add_parser("timing", help="replay the recorded timing claims under load")
    tim.add_argument("--repeats", type=int, default=5, help="replays of each claim in a row (default 5)")
    tim.add_argument("--load", type=int, default=1, help="busy processes running meanwhile (default 1)")
    tim.add_argument("--only", default=None, help="claims whose 'chapter/claim' contains this text")
    args = parser.parse_args(argv)
    handlers = {"run": cmd_run, "build": cmd_build, "list": cmd_list, "bench": cmd_bench, "timing": cmd_timing}
    try:
        return handlers[args.command](args)
    except (ChapterError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
