"""The built site in a real browser: every page loads offline, without errors, charts rendered.

Needs ``_build/html`` (``python -m mpnn build``) and Chromium (``/usr/bin/chromium`` or
``$MPNN_CHROMIUM``); skipped otherwise unless ``MPNN_REQUIRE_SITE=1`` (set by ``make test``).
Screenshots of the first screen of every page (1280x900, and 390x844 in the dark theme) are saved to
``_build/screenshots``.
Every chapter page must open with its "at a glance" box (whose links land on the page or on one of
the chapter's part pages), no page may be longer than about ten screens at 1280 x 900, every site
explorer (a chart ``mpnn-<chapter>-<name>-site`` with bound controls) must redraw when its control
moves, the findings page must sort and filter, and the figure files linked under charts must be served.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from pathlib import Path

import pytest

from mpnn.infra import paths
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


def pages(api: bool = False) -> list[str]:
    """The reading pages (chapters, their parts, the book's own pages), or (``api``) the API
    reference's pages, which have no charts and are checked in one pass."""
    if not HTML.exists():
        return []
    return sorted(str(p.relative_to(HTML)) for p in (HTML / "book").glob("*.html")
                  if p.stem.startswith("api-") == api)


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


def part_pages() -> dict[str, list[str]]:
    """``{chapter: [its part pages]}`` as the chapters' notebook metadata declares them."""
    import nbformat

    from mpnn.runtime import notebooks, subpages
    out = {}
    for chapter in notebooks.chapters():
        nb = nbformat.read(paths.BOOK / f"{chapter}.ipynb", as_version=4)
        names = [subpages.page_name(chapter, p["title"]) for p in subpages.declared_pages(nb)]
        if names:
            out[chapter] = names
    return out


def test_every_toc_page_was_built():
    import yaml
    toc = yaml.safe_load((paths.ROOT / "_toc.yml").read_text())
    built = {Path(p).stem for p in pages()}
    from mpnn.runtime.notebooks import toc_entries
    expected = toc_entries() + [p for parts in part_pages().values() for p in parts]
    missing = [name for name in expected if name not in built]
    assert toc["root"] == "book/intro"
    assert not missing, f"pages missing from the site: {missing}"


LONGEST_PAGE = 11 * 900     # px at 1280 x 900: about ten screens; a longer chapter is split into parts


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
    stem = Path(page).stem
    if stem in chapter_pages():
        problems += glance_problems(tab)
    problems += explorer_problems(tab)
    problems += chart_fit_problems(tab)
    height = tab.evaluate("document.documentElement.scrollHeight")
    if height > LONGEST_PAGE:
        problems.append(f"the page is {height} px long, {height / 900:.1f} screens: split it into parts "
                        f"(notebook metadata mpnn.pages) or fold its details")
    shots = paths.build_dir() / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    tab.evaluate("window.scrollTo(0, 0)")
    tab.screenshot(path=str(shots / (stem + ".png")))      # the first screen: what a reader sees first
    context.close()
    assert not problems, f"{page}:\n" + "\n".join(problems)


def chart_fit_problems(tab) -> list[str]:
    """Every chart fits the text column (no scroll box, nothing cut)."""
    wide = tab.evaluate("""() => Array.from(document.querySelectorAll("div.mpnn-chart")).map(div => {
        const svg = div.querySelector("svg"); if (!svg) return null;
        const col = (div.closest("article") || document.body).getBoundingClientRect().width;
        const w = svg.getBoundingClientRect().width;
        return w > col + 1 ? `${div.id}: ${Math.round(w)} px in a ${Math.round(col)} px column` : null;
    }).filter(Boolean)""")
    return [f"chart wider than the column: {w}" for w in wide]


@pytest.mark.parametrize("page", pages())
def test_page_reads_on_a_phone_and_in_the_dark(server, browser, page):
    """At 390 x 844 no page scrolls sideways and every chart fits; with the OS in dark mode the site
    is dark and the verdict box stays readable (contrast of its text at least 4.5:1)."""
    problems = []
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    tab = context.new_page()
    tab.goto(f"{server}/{page}", wait_until="load", timeout=60_000)
    tab.wait_for_timeout(300)
    for chart_id in tab.locator("div.mpnn-chart").evaluate_all("ds => ds.map(d => d.id)"):
        try:
            tab.wait_for_function("id => document.getElementById(id).dataset.rendered === '1'", arg=chart_id,
                                  timeout=30_000)
        except Exception:
            problems.append(f"chart {chart_id} did not render")
    width = tab.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
    if width[0] > width[1] + 1:
        problems.append(f"the page scrolls sideways at 390 px: {width[0]} px wide")
    problems += chart_fit_problems(tab)
    theme = tab.evaluate("() => document.documentElement.dataset.theme")
    if theme != "dark":
        problems.append(f"the site ignores the reader's dark colour preference (theme {theme!r})")
    contrast = tab.evaluate(CONTRAST)
    if contrast is not None and contrast < 4.5:
        problems.append(f"the verdict box's text has a contrast of {contrast:.1f}:1 in the dark theme")
    shots = paths.build_dir() / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    tab.evaluate("window.scrollTo(0, 0)")
    tab.screenshot(path=str(shots / (Path(page).stem + "-390-dark.png")))
    context.close()
    assert not problems, f"{page}:\n" + "\n".join(problems)


CONTRAST = """() => {
    const box = document.querySelector("div.mpnn-glance"); if (!box) return null;
    const rgb = c => (c.match(/[\\d.]+/g) || [0, 0, 0]).slice(0, 3).map(Number);
    const lum = c => { const v = rgb(c).map(x => { x /= 255; return x <= 0.03928 ? x / 12.92 : Math.pow((x + 0.055) / 1.055, 2.4); });
                       return 0.2126 * v[0] + 0.7152 * v[1] + 0.0722 * v[2]; };
    const text = getComputedStyle(box.querySelector("td, p") || box).color;
    const bg = getComputedStyle(box).backgroundColor;
    const [a, b] = [lum(text), lum(bg)].sort((x, y) => y - x);
    return (a + 0.05) / (b + 0.05);
}"""


def chapter_pages() -> list[str]:
    """Chapters (notebooks) that wrote a manifest with claims: their page opens with the box."""
    import json
    from mpnn.runtime.notebooks import chapters
    out = []
    for c in chapters():
        m = paths.manifest_dir() / f"{c}.json"
        if m.exists() and json.loads(m.read_text()).get("claims"):
            out.append(c)
    return out


def glance_problems(tab) -> list[str]:
    """The box is the first thing after the title and source, on the first screen, its links land."""
    info = tab.evaluate("""() => {
        const box = document.querySelector("div.mpnn-glance");
        if (!box) return null;
        const h1 = document.querySelector("article h1");
        const h2 = document.querySelector("article section h2");
        const before = h2 ? (box.compareDocumentPosition(h2) & Node.DOCUMENT_POSITION_FOLLOWING) !== 0 : true;
        const links = Array.from(box.querySelectorAll("a")).map(a => a.getAttribute("href"));
        const missing = links.filter(h => h.startsWith("#") && !document.getElementById(decodeURIComponent(h.slice(1))));
        return {top: box.getBoundingClientRect().top + window.scrollY, before_h2: before,
                after_h1: !!h1 && (h1.compareDocumentPosition(box) & Node.DOCUMENT_POSITION_FOLLOWING) !== 0,
                lines: box.querySelectorAll("li").length, missing: missing, links: links};
    }""")
    if info is None:
        return ["no 'at a glance' box (div.mpnn-glance)"]
    out = []
    if not (info["after_h1"] and info["before_h2"]):
        out.append("the 'at a glance' box is not between the title and the first section")
    if info["top"] > 900:
        out.append(f"the 'at a glance' box starts at {info['top']:.0f} px, below the first screen")
    if info["lines"] == 0:
        out.append("the 'at a glance' box lists no claim")
    missing = list(info["missing"])
    for href in info["links"]:            # a section on one of the chapter's part pages
        target, _, anchor = href.partition("#")
        if target.endswith(".html") and anchor and not target.startswith(("http:", "https:")):
            page = HTML / "book" / target
            if not page.exists() or f'id="{anchor}"' not in page.read_text(errors="replace"):
                missing.append(href)
    if missing:
        out.append(f"'at a glance' links to sections that do not exist: {missing}")
    return out


MOVE_CONTROL = """(el) => {
    const box = el.querySelector(".vega-bindings");
    if (!box) return "no bound control";
    const range = box.querySelector("input[type=range]");
    const select = box.querySelector("select");
    const radios = box.querySelectorAll("input[type=radio]");
    const check = box.querySelector("input[type=checkbox]");
    if (range) {
        const lo = +range.min, hi = +range.max, v = +range.value;
        range.value = String(Math.abs(v - lo) > Math.abs(hi - v) ? lo : hi);
        range.dispatchEvent(new Event("input", {bubbles: true}));
        range.dispatchEvent(new Event("change", {bubbles: true}));
    } else if (select) {
        select.selectedIndex = (select.selectedIndex + 1) % select.options.length;
        select.dispatchEvent(new Event("change", {bubbles: true}));
    } else if (radios.length > 1) {
        const other = Array.from(radios).find(r => !r.checked);
        other.click();
    } else if (check) {
        check.click();
    } else {
        return "no control to move";
    }
    return "";
}"""


def explorer_problems(tab) -> list[str]:
    """Move the first control of every site explorer; its SVG must change."""
    out = []
    charts = tab.locator("div.mpnn-chart[id$='-site']")
    for i in range(charts.count()):
        chart = charts.nth(i)
        chart_id = chart.get_attribute("id")
        before = chart.locator("svg").first.evaluate("s => s.outerHTML") if chart.locator("svg").count() else ""
        why = chart.evaluate(MOVE_CONTROL)
        if why:
            out.append(f"site explorer {chart_id}: {why}")
            continue
        tab.wait_for_timeout(300)
        after = chart.locator("svg").first.evaluate("s => s.outerHTML")
        if after == before:
            out.append(f"site explorer {chart_id}: moving its control did not change the chart")
    return out


def test_findings_page_sorts_and_filters(server, browser):
    if not (HTML / "book" / "findings.html").exists():
        pytest.skip("no findings page in this build")
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    tab.goto(f"{server}/book/findings.html", wait_until="load")
    rows = tab.locator("#mpnn-findings-table tbody tr")
    n = rows.count()
    import json
    from mpnn.runtime import site
    expected = len(site.findings_rows({p.stem: json.loads(p.read_text())
                                       for p in paths.manifest_dir().glob("*.json")}))
    assert n == expected > 0
    tab.select_option(".mpnn-filter-col[data-col='4']", "supported")
    shown = tab.locator("#mpnn-findings-table tbody tr:visible").count()
    n_supported = tab.locator("#mpnn-findings-table tbody td[data-value='supported']").count()
    assert shown == n_supported
    tab.select_option(".mpnn-filter-col[data-col='4']", "")
    tab.fill(".mpnn-filter-text", "zzzz-no-such-claim")
    assert tab.locator("#mpnn-findings-table tbody tr:visible").count() == 0
    tab.fill(".mpnn-filter-text", "")
    tab.locator("#mpnn-findings-table th").nth(4).click()            # sort by verdict
    values = tab.locator("#mpnn-findings-table tbody td:nth-child(5)").evaluate_all(
        "tds => tds.map(t => t.dataset.value)")
    assert values == sorted(values)
    tab.close()


def test_figure_files_linked_under_charts_are_served(server):
    import re
    import urllib.request
    links = set()
    for page in pages():
        text = (HTML / page).read_text(errors="replace")
        for block in re.findall(r'<p class="mpnn-figure-links">(.*?)</p>', text, re.S):
            links |= {urllib.parse.urljoin(f"{server}/{page}", h) for h in re.findall(r'href="([^"]+)"', block)}
    assert links, "no chart on the site links its figure files"
    bad = []
    for url in sorted(links):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=10) as r:
                if r.status != 200:
                    bad.append(f"{url}: HTTP {r.status}")
        except Exception as exc:
            bad.append(f"{url}: {exc}")
    assert not bad, "figure files not served:\n" + "\n".join(bad[:20])


SITE_EXPLORERS = ("conditional_computation", "early_exits", "multipart_deployment", "specialization", "switch_network",
                  "tag_partitioning", "token_selection")   # chapters whose explorer has a site version


def test_site_explorers_are_on_their_pages():
    """The explorers moved by test_page_renders_offline exist (the check is not vacuous)."""
    import re
    found = {}
    for page in pages():
        ids = re.findall(r'class="mpnn-chart" id="mpnn-([A-Za-z0-9_.-]+)-site"', (HTML / page).read_text(errors="replace"))
        if ids:
            found[Path(page).stem] = ids
    assert found, "no site explorer (plots.bound chart shown by widgets.explorer(site_view=...)) on the site"
    chapters_found = {stem.split("-", 1)[0] for stem in found}      # a part page is <chapter>-<part>
    missing = [c for c in SITE_EXPLORERS if (HTML / "book" / f"{c}.html").exists() and c not in chapters_found]
    assert not missing, f"chapters whose explorer lost its site version: {missing}"


# Words about how the book was made, the repr of an internal object, or a path of the machine that
# built the site: none may reach a page. ("CI" alone is a confidence interval and stays.)
PROCESS_WORDS = (r"\bissues? \d+|\b(?:in|on)\s+CI\b(?![\s-]*(?:\d|of|lies|excludes|includes|above|below))|\bCI(?:'s|\s+(?:run|runs|machine|build|job|cores))\b|"
                 r"fresh[- ]clone|earlier version|previous version|\bdocument 00\d\b|\w+\((?:id|chapter)=['\"]|"
                 r"(?<![\w.])/(?:work|root|home|tmp|var|opt)/\S+")


def visible_text(html_text: str) -> str:
    import html as _html
    import re
    body = re.sub(r"(?is)<(script|style|svg)\b.*?</\1>", " ", html_text)
    body = re.sub(r"(?s)<[^>]+>", " ", body)
    text = _html.unescape(body).replace("\u2019", "'").replace("\u2018", "'")      # Sphinx's smart quotes
    return " ".join(text.replace("\u201c", '"').replace("\u201d", '"').split())


def test_no_process_words_or_machine_paths_on_any_page():
    import re
    pattern = re.compile(PROCESS_WORDS)
    root = str(paths.ROOT)
    problems = []
    for page in pages() + pages(api=True):
        text = visible_text((HTML / page).read_text())
        hits = sorted({m.group(0) for m in pattern.finditer(text)} | ({root} if root in text else set()))
        if hits:
            problems.append(f"{page}: {hits[:8]}")
    assert not problems, "process words, object reprs or machine paths on the pages:\n" + "\n".join(problems)


def test_the_counts_agree_on_every_page_that_shows_them():
    """The introduction, the findings page and the reproducibility report show the same verdict counts."""
    import json
    import re
    from mpnn.runtime import site, verdicts
    manifests = {p.stem: json.loads(p.read_text()) for p in paths.manifest_dir().glob("*.json")}
    rows = site.findings_rows(manifests)
    sentence = visible_text(verdicts.intro_sentence(rows).replace("**", ""))
    intro = visible_text((HTML / "book" / "intro.html").read_text()) if (HTML / "book" / "intro.html").exists() \
        else visible_text((HTML / "index.html").read_text())
    head = sentence.split(". The [findings]")[0]
    assert head in intro, f"the introduction does not show this build's counts: {head!r}"
    table = visible_text(verdicts.count_table(rows))
    for name in ("findings", "reproducibility"):
        shown = [visible_text(p.read_text()) for p in (HTML / "book").glob(f"{name}*.html")]   # the page and its parts
        if shown:
            assert any(table in text for text in shown), f"{name}: the verdict count table differs from the manifests'"
    assert all(c.get("kind") and c.get("criterion") and c.get("verdict") for m in manifests.values()
               for c in m.get("claims", [])), "a claim without kind, criterion or verdict"
    assert re.search(r"\d", table)


def test_the_site_is_light():
    """Under 30 MB in all, no page over 2 MB (its HTML with the chart specs inlined)."""
    from mpnn.runtime import site
    assert site.size_mb(HTML) <= 30, f"the site is {site.size_mb(HTML):.1f} MB"
    heavy = {str(p.relative_to(HTML)): p.stat().st_size for p in HTML.rglob("*.html") if p.stat().st_size > 2e6}
    assert not heavy, f"pages over 2 MB: {heavy}"
    assert not list(HTML.glob("_static/**/*.map")), "theme source maps are shipped"


def test_every_document_page_links_out_to_its_sources():
    """A reader can follow each chapter to its source document (or the original code) and find
    every source in the references."""
    import re

    from mpnn.runtime import site
    for chapter in site.documents():
        text = (HTML / "book" / f"{chapter}.html").read_text()
        assert re.search(r'href="https://(arxiv\.org/abs/\d{4}\.\d{4,5}|github\.com/)', text), \
            f"{chapter}: no link to its source document or code"
    refs = (HTML / "book" / "references.html").read_text()
    links = set(re.findall(r'href="(https://[^"]+)"', refs))
    assert len([u for u in links if "arxiv.org" in u]) >= 4 and any("github.com" in u for u in links), sorted(links)


def test_the_api_pages_load_offline_and_read_on_a_phone(server, browser):
    """Every API reference page loads without an error or an outside request and, at 390 px in the
    dark theme, does not scroll sideways. (No length rule: a reference page is looked up, not read
    through.)"""
    problems: list[str] = []
    context = browser.new_context(viewport={"width": 390, "height": 844}, color_scheme="dark")
    tab = context.new_page()
    tab.on("pageerror", lambda e: problems.append(f"{tab.url}: page error: {e}"))
    tab.on("response", lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None)
    tab.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:", "about:"))
           else problems.append(f"external request: {r.url}"))
    api = pages(api=True)
    assert len(api) >= 10, f"only {len(api)} API reference pages"
    for page in api:
        tab.goto(f"{server}/{page}", wait_until="load", timeout=60_000)
        width = tab.evaluate("() => [document.documentElement.scrollWidth, window.innerWidth]")
        if width[0] > width[1] + 1:
            problems.append(f"{page} scrolls sideways at 390 px: {width[0]} px wide")
    tab.wait_for_timeout(500)
    context.close()
    assert not problems, "\n".join(problems[:20])


def test_every_source_link_of_the_api_pages_opens_its_line():
    """The API reference's [source] links land on a line of the module's source page."""
    import re
    api = [HTML / p for p in pages(api=True)]
    assert api, "no API reference pages"
    links = {h for page in api for h in re.findall(r'href="(\.\./code/[^"]+)"', page.read_text())}
    assert len(links) > 100, f"only {len(links)} [source] links"
    bad = []
    for href in sorted(links):
        path, _, anchor = href.partition("#")
        target = HTML / "book" / path
        if not target.exists() or (anchor and f'id="{anchor}"' not in target.read_text()):
            bad.append(href)
    assert not bad, f"[source] links that land nowhere: {bad[:10]}"
