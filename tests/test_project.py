"""Project hygiene: pins agree, notebooks are stripped and well-formed, kernel registered, plots offline."""
import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from mpnn.infra import paths
from mpnn.runtime import repro, notebooks, plots

ROOT = paths.ROOT


def _pins(lines):
    pins = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        name, _, version = line.partition("==")
        pins[name.strip().lower()] = version.split(";")[0].strip()
    return pins


def test_environment_yml_matches_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_block) == req
    assert "python=3.11" in env["dependencies"]
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    assert req["jupyter-book"].startswith("1.")


def test_requirements_agree_with_constraints_and_pyproject_ranges():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    frozen = _pins((ROOT / "constraints.txt").read_text().splitlines())
    for name, version in req.items():
        assert frozen.get(name) == version, f"{name}: requirements {version}, constraints {frozen.get(name)}"
    import tomllib
    from packaging.requirements import Requirement
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + sum(project["optional-dependencies"].values(), [])
    for spec in declared:
        r = Requirement(spec)
        assert r.specifier, f"{r.name} has no version bound in pyproject.toml"
        if r.name.lower() in req:
            assert r.specifier.contains(req[r.name.lower()], prereleases=True), f"{r.name} pin outside its range"


def test_cuda_only_pins_apply_only_on_linux_x86_64():
    """torch's CUDA libraries exist for Linux x86-64 only: their pins carry that marker, so the
    constraints also resolve on macOS arm64 (checked with `uv pip compile --python-platform`)."""
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.startswith(("nvidia-", "triton==", "cuda-")):
            assert 'platform_system == "Linux" and platform_machine == "x86_64"' in line, line


def test_the_console_script_runs():
    import importlib
    import tomllib
    target = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["mpnn"]
    module, _, function = target.partition(":")
    assert callable(getattr(importlib.import_module(module), function))
    out = subprocess.run([sys.executable, "-c", f"import sys; from {module} import {function}; "
                          f"sys.argv = ['mpnn', '--help']; {function}()"], capture_output=True, text=True)
    assert out.returncode == 0 and "run" in out.stdout, out.stderr


def test_committed_notebooks_are_stripped_and_have_parameters():
    for nb_path in sorted(paths.BOOK.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, f"{nb_path.name} has outputs"
        params = notebooks.declared_parameters(nb_path.stem)
        assert "seed" in params and "device" in params, f"{nb_path.name}: parameters need seed and device"


def test_every_toc_entry_exists_and_every_notebook_is_in_the_toc():
    entries = notebooks.toc_entries()
    for name in entries:
        assert (paths.BOOK / f"{name}.ipynb").exists() or (paths.BOOK / f"{name}.md").exists(), name
    for nb_path in paths.BOOK.glob("*.ipynb"):
        assert nb_path.stem in entries, f"{nb_path.name} is not in _toc.yml"


def test_chapters_record_claims_and_finish():
    for chapter in notebooks.chapters():
        text = (paths.BOOK / f"{chapter}.ipynb").read_text()
        assert f'start_run(\\"{chapter}\\"' in text or f"start_run('{chapter}'" in text, chapter
        assert "run.claim(" in text and "run.finish()" in text, f"{chapter} asserts no claims"


def test_project_kernel_is_registered_and_imports_mpnn():
    from jupyter_client.kernelspec import KernelSpecManager
    specs = KernelSpecManager().find_kernel_specs()
    assert "mpnn" in specs, "run `make setup` to register the kernel"
    spec = json.loads((Path(specs["mpnn"]) / "kernel.json").read_text())
    out = subprocess.run([spec["argv"][0], "-c", "import mpnn, torch, altair, ipywidgets; print(mpnn.__file__)"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).parent == ROOT / "mpnn"


def test_site_chart_html_is_offline_and_escaped(tmp_path, monkeypatch):
    import altair as alt
    import pandas as pd
    chart = alt.Chart(pd.DataFrame({"x": [1, 2], "label": ["</script><b>", "ok"]})).mark_point().encode(x="x", tooltip="label")
    html = plots.embed_html(chart.to_dict(), "mpnn-test-chart")
    assert "</script><b>" not in html and "<\\/script>" in html
    assert not re.search(r"https?://(?!vega\.github\.io/schema)", html), "chart HTML must not reference the network"
    monkeypatch.setenv("MPNN_BUILD_DIR", str(tmp_path))
    monkeypatch.setattr(repro, "_current", repro.RunContext(chapter="demo"))
    spec = plots.save(chart, "demo chart")
    assert (tmp_path / "figures" / "demo" / "demo-chart.vl.json").exists()
    svg = (tmp_path / "figures" / "demo" / "demo-chart.svg").read_text()
    assert svg.startswith("<svg") and spec["mark"]["type"] == "point"


TIMING_CALLS = ("timing.measure(", "timing.measure_from(", "interleaved_samples(", "bench.run_all(")


def _top_level_code(source: str) -> str:
    """The cell's code outside function and class definitions (what runs when the cell runs)."""
    import ast
    tree = ast.parse(source)
    return "\n".join(ast.unparse(node) for node in tree.body
                     if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)))


def test_cells_that_time_things_are_tagged_timing():
    """The runner runs cells tagged `timing` alone; a cell that times without the tag shares the CPU."""
    for nb_path in sorted(paths.BOOK.glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        for i, cell in enumerate(nb["cells"]):
            if cell["cell_type"] != "code":
                continue
            code = _top_level_code("".join(cell["source"]))
            if any(call in code for call in TIMING_CALLS):
                assert "timing" in cell.get("metadata", {}).get("tags", []), \
                    f"{nb_path.name} cell {i} times something but is not tagged 'timing'"
