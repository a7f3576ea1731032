"""The website, built in smoke mode and checked in a real browser (headless Chromium).

The book is built with the same command line as the website (``-W -n
--keep-going``, so any warning fails) with ``CI`` set, served on 127.0.0.1,
and every page of the table of contents is opened in Debian's Chromium,
driven by Playwright. For each page: no console errors and no failed
requests, all math typeset by MathJax, every image loaded with a non-zero
size, audio players that decode on the chapters that have sound, exercise
solutions hidden until clicked and shown after a click, internal links that
resolve, launch buttons that open this chapter's notebook in Colab and
Binder, and no code, output or code in the text wider than the article's
column (no sideways scrolling). A screenshot of each page is saved to
``test-artifacts/screenshots``.

The checks are plain functions of a page, and ``test_the_checker_*`` feeds
them broken pages to show that they fail when a page is broken.
"""

from __future__ import annotations

import functools
import http.server
import os
import re
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urljoin

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPOSITORY = CONFIG["repository"]["url"].rstrip("/").removeprefix("https://github.com/")
BRANCH = CONFIG["repository"].get("branch", "main")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Chapters with sound, and how many players each must show at least.
AUDIO_PLAYERS = {"02_jsb_chorales": 1, "07_evaluation_and_music": 3}

playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="pip install playwright"
)

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason="Chromium is not installed (the test command installs Debian's chromium)",
)


def toc_pages() -> list[str]:
    """Every page of the table of contents: paths from the site root, no suffix."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]]

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                pages.append(node["file"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc.get("parts", toc.get("chapters", [])))
    return pages


@pytest.fixture(scope="module")
def site() -> Path:
    """Build the website in smoke mode: as the book build does, with CI set."""
    output = ARTIFACTS / "site"
    env = {**os.environ, "CI": "true"}
    stamp = [sys.executable, str(ROOT / ".ci" / "cache_stamp.py")]
    subprocess.run([*stamp, "check", str(output / "_build")], check=True)
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "from jupyter_book.cli.main import main; main()",
            "build",
            str(ROOT),
            "--path-output",
            str(output),
            "--all",
            "-W",
            "-n",
            "--keep-going",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    log = ARTIFACTS / "site-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(result.stdout + result.stderr)
    assert result.returncode == 0, (
        f"the smoke-mode book build failed; see {log}:\n{result.stderr[-4000:]}"
    )
    subprocess.run([*stamp, "write", str(output / "_build")], check=True)
    return output / "_build" / "html"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server(site):
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_FLAGS
        )
        yield chromium
        chromium.close()


class Visit:
    """A page opened in the browser, with what went wrong while it loaded."""

    def __init__(self, browser, url: str):
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "pageerror", lambda error: self.errors.append(f"script error: {error}")
        )
        self.page.on(
            "console",
            lambda message: (
                self.errors.append(
                    f"console {message.type}: {message.text} "
                    f"({message.location.get('url', '')})"
                )
                if message.type == "error"
                else None
            ),
        )
        self.page.on(
            "requestfailed",
            lambda request: self.errors.append(
                f"request failed: {request.url} ({request.failure})"
            ),
        )
        self.page.on(
            "response",
            lambda response: (
                self.errors.append(f"HTTP {response.status}: {response.url}")
                if response.status >= 400
                else None
            ),
        )
        self.page.goto(url, wait_until="load")
        self.page.wait_for_load_state("networkidle")

    def close(self):
        self.context.close()


def typeset_problems(page) -> list[str]:
    """Math left as TeX: MathJax missing or failed, or a formula it did not typeset."""
    has_mathjax = page.evaluate(
        "() => !!(window.MathJax && MathJax.startup && MathJax.startup.promise)"
    )
    raw_math = page.locator(".math").count()
    if not has_mathjax:
        return (
            [f"MathJax did not load ({raw_math} formulas on the page)"]
            if raw_math
            else []
        )
    page.evaluate("() => MathJax.startup.promise")
    problems = []
    untypeset = page.evaluate(
        "() => Array.from(document.querySelectorAll('.math'))"
        ".filter(el => !el.querySelector('mjx-container'))"
        ".map(el => el.textContent.slice(0, 60))"
    )
    problems += [f"formula not typeset: {text!r}" for text in untypeset]
    errors = page.locator("mjx-merror").count()
    if errors:
        problems.append(f"{errors} formulas typeset as MathJax errors")
    text = page.evaluate(
        "() => { const copy = (document.querySelector('main') || document.body)"
        ".cloneNode(true);"
        " copy.querySelectorAll('pre, code, .highlight').forEach(el => el.remove());"
        " document.body.appendChild(copy); const text = copy.innerText;"
        " copy.remove(); return text; }"
    )
    for leftover in re.findall(r"\$\$.{0,40}|\\\(.{0,40}|\\\[.{0,40}", text):
        problems.append(f"raw TeX left in the page text: {leftover!r}")
    return problems


def image_problems(page) -> list[str]:
    broken = page.evaluate(
        "() => Array.from(document.images)"
        ".filter(img => !(img.complete && img.naturalWidth > 0"
        " && img.naturalHeight > 0))"
        ".map(img => img.getAttribute('src').slice(0, 80))"
    )
    return [f"image did not load: {src}" for src in broken]


def audio_problems(page, expected: int) -> list[str]:
    durations = page.evaluate(
        """() => Promise.all(Array.from(document.querySelectorAll('audio')).map(a =>
            a.readyState >= 1 ? a.duration : new Promise(resolve => {
                a.addEventListener('loadedmetadata', () => resolve(a.duration));
                a.addEventListener('error', () => resolve(-1));
                a.load();
                setTimeout(() => resolve(-2), 10000);
            })))"""
    )
    problems = []
    if len(durations) < expected:
        problems.append(f"{len(durations)} audio players, expected at least {expected}")
    problems += [
        f"audio player {i} does not decode (duration {d})"
        for i, d in enumerate(durations)
        if not d > 0
    ]
    return problems


def solution_problems(page) -> list[str]:
    """Each solution's body is hidden until its toggle is clicked, and shown after."""
    problems = []
    solutions = page.locator("div.solution")
    for index in range(solutions.count()):
        solution = solutions.nth(index)
        label = solution.get_attribute("id")
        body = solution.locator("section").first
        if body.is_visible():
            problems.append(f"solution {label} is visible before a click")
            continue
        solution.locator("button.toggle-button").first.click()
        try:
            body.wait_for(state="visible", timeout=3000)
        except playwright_api.TimeoutError:
            problems.append(f"solution {label} stays hidden after a click")
    return problems


def link_problems(page, base: str) -> list[str]:
    """Every link inside the site resolves; every #fragment names an element there."""
    links = page.evaluate(
        "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
    )
    problems = []
    for link in sorted(set(links)):
        if not link.startswith(base):
            continue
        target, fragment = urldefrag(link)
        try:
            with urllib.request.urlopen(target, timeout=10) as response:
                html = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            problems.append(f"broken link {link}: HTTP {error.code}")
            continue
        if fragment and not re.search(rf'id="{re.escape(fragment)}"', html):
            problems.append(f"link {link}: no element with id {fragment!r}")
    return problems


def launch_problems(page, page_path: str) -> list[str]:
    """Colab and Binder buttons open this very notebook of this repository."""
    if not page_path.startswith("notebooks/"):
        return []
    hrefs = page.evaluate(
        "() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)"
    )
    notebook = f"{page_path}.ipynb"
    colab = f"https://colab.research.google.com/github/{REPOSITORY}/blob/{BRANCH}/{notebook}"
    binder = f"https://mybinder.org/v2/gh/{REPOSITORY}/{BRANCH}?urlpath=tree/{notebook}"
    problems = []
    if colab not in hrefs:
        found = [h for h in hrefs if "colab" in h]
        problems.append(f"no Colab button to {colab} (found {found})")
    if binder not in hrefs:
        found = [h for h in hrefs if "mybinder" in h]
        problems.append(f"no Binder button to {binder} (found {found})")
    return problems


WIDTH_CHECK = """() => {
    const column = document.querySelector('article.bd-article')
        || document.querySelector('main') || document.body;
    const right = column.getBoundingClientRect().right + 1;
    const label = el => {
        const first = (el.className && typeof el.className === 'string')
            ? '.' + el.className.trim().split(/\\s+/)[0] : '';
        return el.tagName.toLowerCase() + first;
    };
    const excerpt = el => (el.textContent || el.getAttribute('src') || '')
        .trim().split('\\n')[0].slice(0, 50);
    // Blocks that scroll when their content is wider (not inline math, say).
    const scrolls = el => el.tagName === 'PRE'
        || ['auto', 'scroll'].includes(getComputedStyle(el).overflowX);
    const wide = [];
    for (const el of column.querySelectorAll('pre, .cell_output, .cell_output *')) {
        if (el.getClientRects().length === 0) continue;  // hidden: a folded solution
        const box = el.getBoundingClientRect();
        if (scrolls(el) && el.scrollWidth > el.clientWidth + 1) {
            const what = `holds ${el.scrollWidth}px in ${el.clientWidth}px`;
            wide.push([el, `${label(el)} ${what}`]);
        } else if (box.right > right) {
            const what = `ends ${Math.round(box.right - right)}px past the column`;
            wide.push([el, `${label(el)} ${what}`]);
        }
    }
    // Report the innermost element only: its parents are wide because of it.
    return wide
        .filter(([el]) => !wide.some(([other]) => other !== el && el.contains(other)))
        .map(([el, what]) => `${what}: ${JSON.stringify(excerpt(el))}`);
}"""


def width_problems(page) -> list[str]:
    """Code (cells and code in the text) and outputs wider than the article's column.

    A block whose content is wider than its box scrolls sideways (its
    ``scrollWidth`` exceeds its ``clientWidth``); an output wider than the
    column spills past it. Hidden blocks (folded solutions) are skipped, so
    run this after the solutions are opened.
    """
    return [f"too wide: {problem}" for problem in page.evaluate(WIDTH_CHECK)]


def check_page(browser, base: str, page_path: str) -> tuple[list[str], list[str]]:
    """What is wrong with a page: everything but widths, and widths."""
    visit = Visit(browser, urljoin(base, f"{page_path}.html"))
    try:
        page = visit.page
        problems = typeset_problems(page) + image_problems(page)
        name = Path(page_path).name
        if name in AUDIO_PLAYERS or page.locator("audio").count():
            problems += audio_problems(page, AUDIO_PLAYERS.get(name, 1))
        problems += launch_problems(page, page_path)
        problems += link_problems(page, base)
        screenshot = ARTIFACTS / "screenshots" / f"{page_path.replace('/', '__')}.png"
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(screenshot), full_page=True)
        problems += solution_problems(page)
        widths = width_problems(page)  # with the solutions open
        return visit.errors + problems, widths
    finally:
        visit.close()


_checked: dict[str, tuple[list[str], list[str]]] = {}


def checked(browser, base: str, page_path: str) -> tuple[list[str], list[str]]:
    """:func:`check_page`, once per page for the tests below."""
    if page_path not in _checked:
        _checked[page_path] = check_page(browser, base, page_path)
    return _checked[page_path]


@pytest.mark.parametrize("page_path", toc_pages())
def test_page(browser, server, page_path):
    problems, _ = checked(browser, server, page_path)
    assert not problems, f"{page_path}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("page_path", toc_pages())
def test_code_and_outputs_fit_the_column(browser, server, page_path):
    """No code cell, output or code in the text scrolls sideways or spills over."""
    _, widths = checked(browser, server, page_path)
    assert not widths, f"{page_path}:\n  " + "\n  ".join(widths)


def test_the_home_page_leads_to_the_preface(browser, server):
    visit = Visit(browser, server)
    try:
        assert visit.page.url.endswith(f"{toc_pages()[0]}.html")
    finally:
        visit.close()


NO_MATHJAX_PAGE = """<!doctype html><html><head><meta charset="utf-8"></head>
<body><main><p>A formula nobody typesets: <span class="math">\\(x^2\\)</span></p>
</main></body></html>"""

BROKEN_PAGE = """<!doctype html><html><head><meta charset="utf-8">
<script>
window.MathJax = {tex: {displayMath: []}, options: {processHtmlClass: 'math'}}
</script>
<script defer src="_static/mathjax/tex-mml-chtml.js"></script></head>
<body><main>
<p>Typeset: <span class="math">\\(x^2\\)</span>; malformed:
<span class="math">\\(\\begin{nosuchenv}x\\end{nosuchenv}\\)</span></p>
<p>Left raw: $$y^2$$; in code it is fine: <code>\\(c\\)</code></p>
<img src="no-such-image.png" alt="missing">
<audio controls src="data:audio/wav;base64,AAAA"></audio>
<a href="no-such-page.html">broken</a> <a href="broken.html#no-such-anchor">anchor</a>
<div class="solution dropdown admonition" id="visible-solution">
<section><p>Shown</p></section></div>
<pre style="overflow: auto">WIDE = 1  # LONG_COMMENT</pre>
<div class="cell_output"><img style="width: 3000px"
src="data:image/gif;base64,R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7"></div>
<pre style="display: none">HIDDEN = 1  # LONG_COMMENT</pre>
</main></body></html>""".replace("LONG_COMMENT", "x" * 300)


@pytest.fixture(scope="module")
def broken_pages(site):
    pages = {"broken": BROKEN_PAGE, "no-mathjax": NO_MATHJAX_PAGE}
    for name, html in pages.items():
        (site / f"{name}.html").write_text(html)
    yield
    for name in pages:
        (site / f"{name}.html").unlink()


def test_the_checker_catches_a_broken_page(browser, server, broken_pages):
    """The checks on a page with bad TeX, a missing image, bad audio, dead links,
    a shown solution and code too wide for the column."""
    visit = Visit(browser, urljoin(server, "broken.html"))
    try:
        page = visit.page
        math = typeset_problems(page)
        assert any("typeset as MathJax errors" in p for p in math), math
        assert any("raw TeX left" in p and "y^2" in p for p in math), math
        assert not any("x^2" in p or "(c" in p for p in math), math
        assert image_problems(page) == ["image did not load: no-such-image.png"]
        assert any("does not decode" in p for p in audio_problems(page, 1))
        assert audio_problems(page, 2)[0] == "1 audio players, expected at least 2"
        links = link_problems(page, server)
        assert any("no-such-page.html: HTTP 404" in p for p in links), links
        assert any("no element with id 'no-such-anchor'" in p for p in links), links
        assert solution_problems(page) == [
            "solution visible-solution is visible before a click"
        ]
        assert launch_problems(page, "notebooks/01_gaussian_state_space_models")
        widths = width_problems(page)
        assert len(widths) == 2, widths
        assert "WIDE = 1" in widths[0] and "holds" in widths[0], widths
        assert "img" in widths[1] and "past the column" in widths[1], widths
        assert any("HTTP 404" in e for e in visit.errors), visit.errors
    finally:
        visit.close()


def test_the_checker_catches_an_unrendered_formula(browser, server, broken_pages):
    visit = Visit(browser, urljoin(server, "no-mathjax.html"))
    try:
        math = typeset_problems(visit.page)
        assert math == ["MathJax did not load (1 formulas on the page)"], math
    finally:
        visit.close()
