"""The papermill runner: validation before execution, failure handling, profiles."""
import json
import os
import subprocess
import sys
import time

import nbformat
import pytest

from mpnn.infra import paths
from mpnn.runtime import cli, notebooks
from mpnn.runtime.notebooks import ChapterError


def test_unknown_chapter_lists_choices():
    with pytest.raises(ChapterError, match="unknown chapter.*valid chapters: .*datasets"):
        cli.plan(["no_such_chapter"], "smoke", {})


def test_unknown_profile_lists_choices():
    with pytest.raises(ChapterError, match="valid profiles: smoke, default, full"):
        cli.plan(["datasets"], "huge", {})


def test_unknown_parameter_lists_valid_ones():
    with pytest.raises(ChapterError, match=r"unknown parameter 'epochs'; valid parameters: seed \(int\)"):
        cli.plan(["datasets"], "smoke", cli.parse_overrides([["epochs", "3"]]))


def test_wrong_type_is_rejected_with_default_shown():
    with pytest.raises(ChapterError, match="'samples_per_digit' must be int .*got 'many'"):
        cli.plan(["datasets"], "smoke", cli.parse_overrides([["samples_per_digit", "many"]]))
    with pytest.raises(ChapterError, match="must be int"):
        cli.plan(["datasets"], "smoke", cli.parse_overrides([["seed", "1.5"]]))


def test_values_parse_as_yaml_and_target_chapters():
    jobs = cli.plan(["datasets"], "smoke", cli.parse_overrides([["datasets:samples_per_digit", "4"]]))
    assert jobs == [("datasets", {"samples_per_digit": 4})]
    with pytest.raises(ChapterError, match="not being run"):
        cli.plan(["datasets"], "smoke", cli.parse_overrides([["performance:quick", "true"]]))


def test_int_accepted_for_float_but_bool_not_for_int():
    assert notebooks.check_value("c", "lr", 1, 0.5) == 1.0
    with pytest.raises(ChapterError):
        notebooks.check_value("c", "n", True, 3)


def test_every_profile_is_valid_for_every_chapter():
    for profile in notebooks.PROFILE_NAMES:
        jobs = cli.plan([], profile, {})
        assert [c for c, _ in jobs] == notebooks.chapters()


def test_main_returns_2_with_message(capsys):
    assert cli.main(["run", "nope", "--profile", "smoke"]) == 2
    assert "unknown chapter(s) nope; valid chapters: datasets" in capsys.readouterr().err


def _write_notebook(path, cells):
    nb = nbformat.v4.new_notebook()
    nb.cells = cells
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def test_failing_chapter_leaves_no_complete_notebook(tmp_path, monkeypatch):
    book = tmp_path / "book"
    book.mkdir()
    params = nbformat.v4.new_code_cell("x = 1")
    params.metadata["tags"] = ["parameters"]
    _write_notebook(book / "broken.ipynb", [params, nbformat.v4.new_code_cell("raise ValueError(f'bad x={x}')")])
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/broken\n")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "BOOK", book)
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path / "_build"))
    final = tmp_path / "_build" / "src" / "book" / "broken.ipynb"
    final.parent.mkdir(parents=True)
    final.write_text("{}")  # a stale complete-looking copy from an earlier run
    record = cli.execute("broken", {"x": 5}, "smoke")
    assert record["status"] == "failed" and record["cell_source"].startswith("raise ValueError")
    assert record["error"] == "ValueError: bad x=5"
    assert not final.exists()
    assert not final.with_suffix(".partial.ipynb").exists()
    assert (tmp_path / "_build" / "failed" / "broken.ipynb").exists()
    assert not (tmp_path / "_build" / "manifests" / "broken.json").exists()   # only a kernel's finish() writes one


def test_widget_outputs_are_stripped_for_the_site(tmp_path):
    cell = nbformat.v4.new_code_cell("bar")
    cell.outputs = [
        nbformat.v4.new_output("display_data", data={cli.WIDGET_MIME: {"model_id": "x"}, "text/plain": "bar 0%"}),
        nbformat.v4.new_output("stream", name="stdout", text="kept\n"),
    ]
    nb = nbformat.v4.new_notebook(cells=[cell])
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert cli.strip_widget_outputs(path) == 1
    out = nbformat.read(path, as_version=4)
    assert [o.output_type for o in out.cells[0].outputs] == ["stream"] and "widgets" not in out.metadata


def test_cell_gate_runs_timing_cells_alone():
    """Ordinary cells overlap; a timing cell waits for those running and blocks new ones (writer first)."""
    import threading
    import time as _time
    gate = cli.CellGate()
    a, b, c, d = gate.slot("a"), gate.slot("b"), gate.slot("c"), gate.slot("d")
    a.enter(False)
    b.enter(False)                       # two ordinary cells at once
    entered = threading.Event()
    t = threading.Thread(target=lambda: (c.enter(True), entered.set()))
    t.start()
    _time.sleep(0.2)
    assert not entered.is_set()          # waits while a and b run
    late = threading.Event()
    t2 = threading.Thread(target=lambda: (d.enter(False), late.set()))  # a cell of a third chapter
    a.leave()
    t2.start()
    _time.sleep(0.2)
    assert not entered.is_set() and not late.is_set()   # b still runs; d's new cell queues behind c
    b.leave()
    t.join(2)
    assert entered.is_set() and not late.is_set()       # the timing cell goes first, alone
    c.leave()
    c.leave()                            # idempotent
    t2.join(2)
    assert late.is_set()
    d.leave()
    with pytest.raises(ChapterError, match="--jobs"):
        cli.run_chapters([], "smoke", n_jobs=0)


@pytest.mark.parametrize("pause", [True, False])
def test_parallel_chapters_keep_timing_cells_alone(tmp_path, monkeypatch, pause):
    """Two chapters side by side: while one's timing cell runs, the other makes no progress.

    Chapter "one" writes a heartbeat every 20 ms; the kernels' own clocks are compared. A pausable
    chapter is suspended mid-cell (the timing cell does not wait for it); one marked
    ``pause_for_timing: false`` is waited for instead.
    """
    book = tmp_path / "book"
    book.mkdir()
    log = tmp_path / "log.txt"

    def cell(name, seconds, tags=()):
        c = nbformat.v4.new_code_cell(
            f"import time\nt0 = time.time()\nwith open({str(log)!r}, 'a') as f:\n"
            f"    while time.time() - t0 < {seconds}:\n"
            f"        f.write(f'{name} {{time.time()}}\\n'); f.flush(); time.sleep(0.02)\n"
            f"    f.write(f'{name}-span {{t0}} {{time.time()}}\\n')")
        c.metadata["tags"] = list(tags)
        return c
    started = tmp_path / "one-started"
    first = nbformat.v4.new_code_cell(f"open({str(started)!r}, 'w').close()")   # "one" is computing from here
    wait = nbformat.v4.new_code_cell(                                           # "two" starts once "one" runs,
        f"import os, time\nwhile not os.path.exists({str(started)!r}):\n    time.sleep(0.02)")  # whatever the start-up
    for name, cells in {"one": [first, cell("one-a", 4.0), cell("one-b", 1.0)],
                        "two": [wait, cell("two-a", 0.3), cell("two-timing", 0.6, ["timing"]), cell("two-b", 0.2)]}.items():
        params = nbformat.v4.new_code_cell("seed = 0")
        params.metadata["tags"] = ["parameters"]
        _write_notebook(book / f"{name}.ipynb", [params, *cells])
        if name == "one" and not pause:
            nb = nbformat.read(book / "one.ipynb", as_version=4)
            nb.metadata["mpnn"] = {"pause_for_timing": False}
            nbformat.write(nb, book / "one.ipynb")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/one\nchapters:\n- file: book/two\n")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "BOOK", book)
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path / "_build"))
    records = cli.run_chapters([("one", {}), ("two", {})], "smoke", n_jobs=2, report=lambda *_: None)
    assert [r["status"] for r in records] == ["ok", "ok"]
    lines = [line.split() for line in log.read_text().splitlines()]
    spans = {w[0][:-5]: (float(w[1]), float(w[2])) for w in lines if w[0].endswith("-span")}
    beats = [float(w[1]) for w in lines if w[0].startswith("one") and not w[0].endswith("-span")]
    t0, t1 = spans["two-timing"]
    assert not [b for b in beats if t0 <= b <= t1], "chapter one computed during the timing cell"
    one = [spans["one-a"], spans["one-b"]]
    if pause:   # suspended mid-cell: a cell of "one" started before the timing cell and ended after it
        assert any(s < t0 and e > t1 for s, e in one), spans
    else:       # waited for: no cell of "one" overlaps the timing cell
        assert all(e <= t0 or s >= t1 for s, e in one), spans


def _book_with(tmp_path, monkeypatch, metadata):
    book = tmp_path / "book"
    book.mkdir()
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]})])
    nb.metadata["mpnn"] = metadata
    nbformat.write(nb, book / "demo.ipynb")
    (tmp_path / "_toc.yml").write_text("format: jb-book\nroot: book/demo\n")
    monkeypatch.setattr(paths, "ROOT", tmp_path)
    monkeypatch.setattr(paths, "BOOK", book)


def test_the_kernel_context_carries_a_chapters_declared_threads(tmp_path, monkeypatch):
    _book_with(tmp_path, monkeypatch, {"threads": 1, "pause_for_timing": False})
    context = cli.run_context("demo", {"seed": 3}, "smoke", threads=8)
    assert context == {"chapter": "demo", "profile": "smoke", "render": "static", "threads": 1,
                       "parameters": {"seed": 3}}
    assert notebooks.chapter_settings("demo")["pause_for_timing"] is False


def test_the_kernel_context_gets_the_runners_threads_otherwise(tmp_path, monkeypatch):
    _book_with(tmp_path, monkeypatch, {})
    assert cli.run_context("demo", {}, "default", threads=2)["threads"] == 2
    assert notebooks.chapter_settings("demo") == {"pause_for_timing": True, "threads": None, "run_last": False,
                                                  "benchmarks": False}


def test_unknown_notebook_settings_are_rejected(tmp_path, monkeypatch):
    _book_with(tmp_path, monkeypatch, {"threads": "one"})
    with pytest.raises(ChapterError, match="mpnn.threads='one'"):
        notebooks.chapter_settings("demo")


def test_site_staging_decorates_chapters_fills_pages_and_serves_figures(tmp_path, monkeypatch):
    """`python -m mpnn build`'s staging step, on a tiny build tree (no jupyter-book)."""
    import json

    import altair as alt
    import nbformat
    import pandas as pd

    from mpnn.runtime import site
    build = tmp_path / "_build"
    monkeypatch.setenv("MPNN_BUILD_DIR", str(build))
    src = build / "src"
    (src / "book").mkdir(parents=True)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("# T\n\nSource: x.\n\nrest"),
                                         nbformat.v4.new_markdown_cell("## Results\n\nthe one")])
    nbformat.write(nb, src / "book" / "switch_network.ipynb")
    (src / "book" / "intro.md").write_text("# Intro\n\n<!-- mpnn:counts -->\n")
    (src / "book" / "findings.md").write_text("# Findings\n\n<!-- mpnn:findings -->\n")
    (build / "manifests").mkdir()
    (build / "manifests" / "switch_network.json").write_text(json.dumps({
        "chapter": "switch_network", "profile": "default", "claims": [
            {"id": "results", "kind": "claim", "document": "results hold", "criterion": "above 0.5",
             "measured": "0.9 (95% CI 0.8-1.0)", "verdict": "supported", "expected": "supported",
             "note": "", "needs": "smoke"}]}))
    figures = build / "figures" / "switch_network"
    figures.mkdir(parents=True)
    spec = alt.Chart(pd.DataFrame({"a": [1, 2]})).mark_bar().encode(x="a:Q").to_dict()
    (figures / "bars.vl.json").write_text(json.dumps(spec))
    staged = site.stage_site(src)
    assert staged == {"decorated": ["switch_network"], "pngs": 1}
    cells = nbformat.read(src / "book" / "switch_network.ipynb", 4).cells
    assert "mpnn-glance" in cells[1].source and 'href="#results"' in cells[1].source
    assert "the documents' claims: 1 (1 supported)" in (src / "book" / "intro.md").read_text()
    assert "<tr><td><a href=" in (src / "book" / "findings.md").read_text()
    served = src / "_figures" / "figures" / "switch_network"
    assert (served / "bars.png").read_bytes()[:4] == b"\x89PNG" and (served / "bars.svg").exists()
    assert (src / "_vendor" / "mpnn-site.css").exists() and (src / "_vendor" / "mpnn-site.js").exists()


def test_ctrl_c_stops_a_run_within_seconds_and_leaves_no_process_behind(tmp_path):
    """SIGINT to ``python -m mpnn run`` mid-chapter: the runner exits with 130 within seconds, no
    kernel is left running or stopped (SIGSTOP), and ``run.json`` says the run was interrupted."""
    import signal
    import psutil
    env = os.environ | {"MPNN_BUILD_DIR": str(tmp_path / "_build")}
    proc = subprocess.Popen([sys.executable, "-m", "mpnn", "run", "switch_network", "specialization",
                             "--profile", "smoke", "--jobs", "2"], cwd=paths.ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    runner = psutil.Process(proc.pid)
    deadline = time.time() + 120
    while time.time() < deadline and len([c for c in runner.children(recursive=True)
                                          if "ipykernel" in " ".join(c.cmdline())]) < 1:
        time.sleep(0.5)
    time.sleep(3)                                           # a cell is running
    family = runner.children(recursive=True)
    assert family, "no kernel started"
    os.killpg(proc.pid, signal.SIGINT)                      # what Ctrl-C in a terminal sends
    t0 = time.time()
    out, _ = proc.communicate(timeout=60)
    assert time.time() - t0 < 30, "the runner took too long to stop"
    assert proc.returncode == 130, out.decode()[-2000:]
    time.sleep(1)
    alive = [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"processes left behind: {[(p.pid, p.status()) for p in alive]}"
    record = json.loads((tmp_path / "_build" / "run.json").read_text())
    assert record["interrupted"] is True
    assert "Traceback" not in out.decode()
