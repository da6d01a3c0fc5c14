"""Command line: execute chapters with papermill, build the offline site, run benchmarks.

    python -m mpnn list
    python -m mpnn run [CHAPTER ...] --profile smoke|default|full [-p NAME VALUE ...] [--keep-going]
    python -m mpnn build
    python -m mpnn bench [--quick] [--only PATTERN]

``run`` validates every chapter, profile block and ``-p`` override against the notebooks'
``parameters`` cells *before* executing anything, then executes each notebook of ``book/`` into
``_build/src/book/`` (the committed notebooks stay stripped). A failing chapter is reported with its
cell and error; its partial notebook goes to ``_build/failed/`` and no executed copy that looks
complete is left in the site source. ``build`` turns ``_build/src`` into ``_build/html`` with
jupyter-book (no re-execution, warnings are errors) and copies in the JavaScript the site serves.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from . import notebooks, paths
from .notebooks import ChapterError

VENDOR = {  # file in the site's _static (staged in _build/src/_vendor) -> source in node_modules
    "vega.min.js": "vega/build/vega.min.js",
    "vega-lite.min.js": "vega-lite/build/vega-lite.min.js",
    "vega-embed.min.js": "vega-embed/build/vega-embed.min.js",
    "mathjax": "mathjax/es5",
}


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
            shutil.copytree(origin, dest, dirs_exist_ok=True)
        else:
            shutil.copyfile(origin, dest)
    return src


def execute(chapter: str, params: dict[str, Any], profile: str) -> dict[str, Any]:
    """Execute one chapter; returns its outcome record (never leaves a complete-looking failure)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    source = paths.BOOK / f"{chapter}.ipynb"
    final = src_dir() / "book" / f"{chapter}.ipynb"
    partial = final.with_suffix(".partial.ipynb")
    failed = failed_dir() / f"{chapter}.ipynb"
    manifest = paths.manifest_dir() / f"{chapter}.json"
    for stale in (final, partial, failed, manifest):
        stale.unlink(missing_ok=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    # TQDM_DISABLE: progress bars inside the kernel would land in the site as widgets or stderr noise.
    env = {"MPNN_RENDER": "static", "MPNN_PROFILE": profile, "TQDM_DISABLE": "1"}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    start = time.time()
    record: dict[str, Any] = {"chapter": chapter, "profile": profile, "overrides": params}
    try:
        pm.execute_notebook(str(source), str(partial), parameters=params, cwd=str(paths.BOOK),
                            kernel_name="python3", progress_bar={"desc": chapter, "leave": True, "disable": False},
                            request_save_on_cell_execute=False, log_output=False)
        strip_widget_outputs(partial)
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
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        record["runner_duration_s"] = round(time.time() - start, 2)
        _merge_manifest(manifest, record)
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


def _merge_manifest(path: Path, record: dict[str, Any]) -> None:
    """Add the runner's view (status, overrides, duration) to the chapter's own manifest."""
    data = json.loads(path.read_text()) if path.exists() else {"chapter": record["chapter"], "claims": []}
    data["runner"] = record
    data.setdefault("profile", record["profile"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def cmd_run(args) -> int:
    overrides = parse_overrides(args.param or [])
    jobs = plan(args.chapters, args.profile, overrides)  # raises before anything runs
    stage_sources()
    from tqdm.auto import tqdm
    failures = []
    for chapter, params in tqdm(jobs, desc=f"chapters ({args.profile})", unit="chapter"):
        record = execute(chapter, params, args.profile)
        if record["status"] != "ok":
            failures.append(record)
            where = (f"cell [{record['cell']}] `{record.get('cell_source', '')}`" if record.get("cell")
                     else "before the first cell")
            print(f"\nFAILED {chapter} ({where}): {record['error']}\n"
                  f"  partial notebook: {failed_dir() / (chapter + '.ipynb')}", file=sys.stderr)
            if not args.keep_going:
                break
        else:
            print(f"ok {chapter} ({record['runner_duration_s']:.0f} s)")
    if failures:
        print(f"{len(failures)} chapter(s) failed: {', '.join(r['chapter'] for r in failures)}", file=sys.stderr)
        return 1
    return 0


def cmd_build(args) -> int:
    src = stage_sources()
    missing = [c for c in notebooks.toc_entries()
               if not (src / "book" / f"{c}.ipynb").exists() and not (src / "book" / f"{c}.md").exists()]
    if missing:
        raise ChapterError(f"chapter(s) not executed yet: {', '.join(missing)}. "
                           f"Run `python -m mpnn run --profile default` (or `make book`) first.")
    out = paths.build_dir()
    cmd = [str(Path(sys.executable).with_name("jupyter-book")), "build", str(src), "--path-output", str(out.parent),
           "--builder", "html", "-W", "-n", "--keep-going"]
    if out.name != "_build":
        raise ChapterError("jupyter-book writes to <path-output>/_build; keep MPNN_BUILD_DIR named _build")
    result = subprocess.run(cmd)
    if result.returncode != 0:
        print("site build failed (warnings count as errors)", file=sys.stderr)
        return result.returncode
    print(f"site: {out / 'html' / 'index.html'}")
    return 0


def cmd_list(args) -> int:
    for chapter in notebooks.chapters():
        params = notebooks.declared_parameters(chapter)
        print(f"{chapter}: " + ", ".join(f"{k}={v!r}" for k, v in params.items()))
    return 0


def cmd_bench(args) -> int:
    from . import bench
    results = bench.run_all(quick=args.quick, only=args.only, threads=args.threads)
    path = bench.write_results(results)
    print(f"benchmarks: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mpnn", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="execute chapters with papermill")
    run.add_argument("chapters", nargs="*", metavar="CHAPTER", help="chapters to run (default: all)")
    run.add_argument("--profile", default="default", help="smoke | default | full")
    run.add_argument("-p", "--param", nargs=2, action="append", metavar=("NAME", "VALUE"),
                     help="override a parameter (NAME or CHAPTER:NAME); VALUE is parsed as YAML")
    run.add_argument("--keep-going", action="store_true", help="run the remaining chapters after a failure")
    sub.add_parser("build", help="build the site from the executed chapters")
    sub.add_parser("list", help="list chapters and their parameters")
    bench = sub.add_parser("bench", help="run the benchmark harness")
    bench.add_argument("--quick", action="store_true", help="small sizes (CI)")
    bench.add_argument("--only", default=None, help="run cases whose name contains this text")
    bench.add_argument("--threads", type=int, default=1, help="CPU threads for every case (default 1)")
    args = parser.parse_args(argv)
    handlers = {"run": cmd_run, "build": cmd_build, "list": cmd_list, "bench": cmd_bench}
    try:
        return handlers[args.command](args)
    except (ChapterError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
