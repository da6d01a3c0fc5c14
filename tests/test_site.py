"""The built site in a real browser: every page loads offline, without errors, charts rendered.

Needs ``_build/html`` (``python -m mpnn build``) and Chromium (``/usr/bin/chromium`` or
``$MPNN_CHROMIUM``); skipped otherwise unless ``MPNN_REQUIRE_SITE=1`` (set by ``make test``).
Screenshots of every page are saved to ``_build/screenshots``.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from mpnn import paths

HTML = paths.build_dir() / "html"
CHROMIUM = os.environ.get("MPNN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("MPNN_REQUIRE_SITE") == "1"


def _missing() -> str | None:
    if not (HTML / "index.html").exists():
        return f"{HTML} has not been built (run `python -m mpnn build`)"
    if not Path(CHROMIUM).exists():
        return f"Chromium not found at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed"
    return None


reason = _missing()
if reason and REQUIRED:
    raise RuntimeError(f"the site test is required but cannot run: {reason}")
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


def pages() -> list[str]:
    if not HTML.exists():
        return []
    return sorted(str(p.relative_to(HTML)) for p in (HTML / "book").glob("*.html"))


@pytest.fixture(scope="module")
def server():
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(HTML))
    handler.log_message = lambda *args: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield b
        b.close()


def test_every_toc_page_was_built():
    import yaml
    toc = yaml.safe_load((paths.ROOT / "_toc.yml").read_text())
    built = {Path(p).stem for p in pages()}
    from mpnn.runtime.notebooks import toc_entries
    missing = [name for name in toc_entries() if name not in built]
    assert toc["root"] == "book/intro"
    assert not missing, f"pages missing from the site: {missing}"


@pytest.mark.parametrize("page", pages())
def test_page_renders_offline(server, browser, page):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    problems: list[str] = []
    tab.on("console", lambda m: problems.append(f"console {m.type}: {m.text}")
           if m.type == "error" and "Failed to load resource" not in m.text else None)  # reported with URL below
    tab.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    tab.on("requestfailed", lambda r: problems.append(f"failed request: {r.url} ({r.failure})"))
    tab.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    tab.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:", "about:"))
           else problems.append(f"external request: {r.url}"))
    tab.goto(f"{server}/{page}", wait_until="load", timeout=60_000)
    tab.wait_for_timeout(1_000)  # late requests (fonts, lazy scripts) are caught by the listeners
    charts = tab.locator("div.mpnn-chart")
    n_charts = charts.count()
    for i in range(n_charts):
        chart = charts.nth(i)
        chart_id = chart.get_attribute("id")
        try:
            tab.wait_for_function(
                "id => document.getElementById(id).dataset.rendered === '1'", arg=chart_id, timeout=30_000)
        except Exception:
            problems.append(f"chart {chart_id} did not render")
            continue
        if chart.locator("svg").count() == 0:
            problems.append(f"chart {chart_id} rendered no SVG")
    shots = paths.build_dir() / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    tab.screenshot(path=str(shots / (Path(page).stem + ".png")), full_page=True)
    context.close()
    assert not problems, f"{page}:\n" + "\n".join(problems)
