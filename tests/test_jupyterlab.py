"""A chapter in JupyterLab, in a real browser: the live explorer works with the project's kernel.

Starts ``jupyter lab`` on 127.0.0.1 with a random token (never an open server), with the project's
kernel (``mpnn``, installed by ``make setup``), on a copy of the early-exit chapter whose parameters
cell holds small values; opens it in headless Chromium, runs every cell (Run > Run All Cells),
moves the explorer's threshold slider and asserts that its output changed. Screenshots go to
``_build/screenshots/jupyterlab-*.png``. The kernel writes its figures and manifests to a temporary
build folder, never to the book's ``_build``.

Needs JupyterLab, Playwright and Chromium (``/usr/bin/chromium`` or ``$MPNN_CHROMIUM``); skipped
otherwise unless ``MPNN_REQUIRE_LAB=1`` (set by ``make test``).
"""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mpnn.infra import paths
CHROMIUM = os.environ.get("MPNN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("MPNN_REQUIRE_LAB") == "1"
KERNEL = "mpnn"
CHAPTER = "early_exits"
SMALL = {"n_seeds": 2, "n_train": 1000, "n_val": 500, "n_test": 500, "epochs": 1,
         "thresholds": [0.0, 0.1, 0.3, 1.01], "timing_batch": 100, "timing_repeats": 3, "sweep_repeats": 1}


def _kernel_dir() -> Path | None:
    for root in (Path(sys.prefix) / "share" / "jupyter" / "kernels", Path.home() / ".local/share/jupyter/kernels"):
        if (root / KERNEL / "kernel.json").exists():
            return root / KERNEL
    return None


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import jupyterlab  # noqa: F401
        import playwright  # noqa: F401
    except ImportError as exc:
        return f"{exc.name} is not installed"
    if _kernel_dir() is None:
        return f"the project's kernel {KERNEL!r} is not installed (make setup)"
    return None


reason = _missing()
if reason and REQUIRED:
    raise RuntimeError(f"the JupyterLab test is required but cannot run: {reason}")
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


def small_notebook(folder: Path) -> Path:
    """The chapter with small parameters and the project's kernel, in ``folder``."""
    import nbformat
    nb = nbformat.read(paths.BOOK / f"{CHAPTER}.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    lines = []
    for line in cell.source.splitlines():
        name = line.split("=")[0].strip()
        lines.append(f"{name} = {SMALL[name]!r}" if name in SMALL else line)
    cell.source = "\n".join(lines)
    nb.metadata["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (mpnn)", "language": "python"}
    path = folder / f"{CHAPTER}.ipynb"
    nbformat.write(nb, path)
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    small_notebook(root)
    token, port = secrets.token_hex(24), _free_port()
    env = dict(os.environ, MPNN_BUILD_DIR=str(root / "_build"), JUPYTER_RUNTIME_DIR=str(root / "runtime"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / "workspaces"), JUPYTERLAB_SETTINGS_DIR=str(root / "settings"),
               TQDM_DISABLE="1")
    env.setdefault("MPNN_DATA_DIR", str(paths.DATA / "mnist"))
    log = open(root / "lab.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
         "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         "--ServerApp.disable_check_xsrf=False", "--LabApp.expose_app_in_browser=True"] + (["--allow-root"] if os.geteuid() == 0 else []), cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"jupyter lab did not start: {(root / 'lab.log').read_text()[-2000:]}")
            time.sleep(0.5)
        with pytest.raises(urllib.error.HTTPError):      # no token, no access
            urllib.request.urlopen(f"{url}/api/contents", timeout=5)
        yield {"url": url, "token": token, "root": root}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def _dismiss_dialogs(tab) -> None:
    """Close pop-ups that would sit over the notebook (a kernel choice keeps the project's kernel)."""
    dialog = tab.locator(".jp-Dialog")
    if dialog.count():
        select = dialog.locator("select")
        if select.count():
            select.first.select_option(label="Python 3 (mpnn)")
        dialog.locator(".jp-mod-accept").first.click()


def test_chapter_runs_in_jupyterlab_and_its_live_explorer_redraws(lab):
    from playwright.sync_api import sync_playwright
    shots = paths.build_dir() / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        tab = browser.new_page(viewport={"width": 1280, "height": 900})
        try:
            tab.goto(f"{lab['url']}/lab/tree/{CHAPTER}.ipynb?token={lab['token']}", wait_until="load",
                     timeout=90_000)
            tab.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
            tab.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget"
                                  " && window.jupyterapp.shell.currentWidget.sessionContext"
                                  " && window.jupyterapp.shell.currentWidget.sessionContext.session"
                                  " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel"
                                  " && window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.status === 'idle'",
                                  timeout=120_000)
            kernel = tab.evaluate("() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.name")
            assert kernel == KERNEL, f"the notebook runs on kernel {kernel!r}, not the project's {KERNEL!r}"
            _dismiss_dialogs(tab)
            tab.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            slider = tab.locator(".jp-OutputArea .widget-slider .noUi-handle").first
            slider.wait_for(timeout=240_000)
            explorer = tab.locator(".widget-vbox:has(.noUi-handle)").last      # controls above their output
            output = explorer.locator(".widget-output").first
            output.wait_for(timeout=60_000)
            tab.wait_for_function("el => el.textContent.trim().length > 0", arg=output.element_handle(),
                                  timeout=60_000)
            before = output.text_content()
            explorer.scroll_into_view_if_needed()
            tab.screenshot(path=str(shots / "jupyterlab-explorer-before.png"))
            handle = explorer.locator(".noUi-handle").first
            handle.focus()
            tab.keyboard.press("ArrowRight")
            tab.wait_for_function("([el, old]) => el.textContent !== old", arg=[output.element_handle(), before],
                                  timeout=30_000)
            after = output.text_content()
            tab.screenshot(path=str(shots / "jupyterlab-explorer-after.png"))
        except Exception:
            tab.screenshot(path=str(shots / "jupyterlab-failure.png"))
            (shots / "jupyterlab-failure.html").write_text(tab.content())
            raise
        finally:
            browser.close()
    assert "T = " in before and after != before, (before, after)
