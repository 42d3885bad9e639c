"""A report page as a real browser shows it: the folder served over HTTP on a free local port, the page loaded in
Debian's headless Chromium (driven by Playwright; the browser is the system's, Playwright never downloads one).

    from tests.browser import open_report
    page = open_report(workdir / "report.html")      # skips the test when Chromium is missing (fails on CI=true)
    assert page.title and page.verdict.startswith(("PASS", "FAIL"))
    assert page.images and all(width > 0 for _src, width in page.images)   # (src, naturalWidth) pairs
    assert [row[1] for row in page.steps] == [s["title"] for s in drill["steps"]]   # cells' main text

Chromium is looked for as `chromium` on PATH, then /usr/bin/chromium (`./run test` installs it as root). Without
it the calling test is skipped with a note, except under CI=true, where it fails: CI must never turn a missing
browser into a green run (as tests/pg_fixtures.py does for PostgreSQL)."""
from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.pg_fixtures import on_ci

# The machine's network is closed: without these Chromium stalls on its own connection attempts (updates, sync,
# QUIC probes); no sandbox because the tests run as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOAD_TIMEOUT_MS = 30_000


def find_chromium() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def require_chromium() -> str:
    """Chromium's path; skips the calling test when it is missing, fails it on CI."""
    path = find_chromium()
    if path is None:
        missing = "Chromium was not found (`chromium` on PATH or /usr/bin/chromium)"
        if on_ci():
            pytest.fail(f"{missing}, and CI=true requires it: `apt-get install chromium` (./run test does it as "
                        f"root).", pytrace=False)
        pytest.skip(f"{missing}; install Debian's chromium to run the browser tests.")
    return path


class Image(NamedTuple):
    src: str  # as written in the page (relative)
    natural_width: int  # 0: the browser could not load or decode it


@dataclass(frozen=True)
class ReportPage:
    """What the browser showed. A table row is a list of its cells' main text (whitespace collapsed, without the
    grey sub-line a cell may have, e.g. the step's id under its title or the target under a figure);
    `steps_full` has each cell's whole rendered text (innerText: the sub-line after a newline). Header rows (th
    only) are left out."""

    url: str
    title: str
    verdict: str  # the text of #verdict; "" when the page has none
    images: list[Image]
    steps: list[list[str]]  # rows of table#steps' tbody
    steps_full: list[list[str]]
    slos: list[list[str]]  # rows of table#slos
    failed_requests: list[str] = field(default_factory=list)  # URLs the page asked for and did not get
    console_errors: list[str] = field(default_factory=list)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@contextmanager
def serve_folder(folder: Path) -> Iterator[str]:
    """Serve `folder` over HTTP on 127.0.0.1 (a free port); yield its base URL; stop on exit."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="report-http", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


_READ_PAGE = """() => {
  const main = (cell) => {
    const copy = cell.cloneNode(true);
    copy.querySelectorAll('.sub').forEach(e => e.remove());
    return copy.textContent.replace(/\\s+/g, ' ').trim();
  };
  const table = (sel, text) => Array.from(document.querySelectorAll(sel))
      .filter(tr => tr.querySelector('td'))
      .map(tr => Array.from(tr.cells).map(text));
  const rows = (sel) => table(sel, main);
  const verdict = document.querySelector('#verdict');
  return {
    title: document.title,
    verdict: verdict ? verdict.innerText.trim() : '',
    images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), w: i.naturalWidth})),
    steps: rows('table#steps tbody tr'),
    steps_full: table('table#steps tbody tr', c => c.innerText.trim()),
    slos: rows('table#slos tr'),
  };
}"""


def open_report(html_path: Path | str) -> ReportPage:
    """Load `html_path` in headless Chromium, served with its folder over real HTTP (so relative images are fetched
    as a browser would), wait for the load event (every <img> settled) and return what the page shows.
    Skips the calling test when Chromium is missing (fails under CI=true); FileNotFoundError when the page is not
    there; a page that does not load within 30 s raises Playwright's TimeoutError. Uses Playwright's sync API:
    call it outside a running asyncio loop. Takes a few seconds (one Chromium launch)."""
    return open_reports([html_path])[0]


def open_reports(html_paths: list[Path | str]) -> list[ReportPage]:
    """open_report for several pages of one folder, in one Chromium launch (each page in a fresh tab)."""
    paths = [Path(p).resolve() for p in html_paths]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no report there")
    if len({p.parent for p in paths}) != 1:
        raise ValueError("open_reports: the pages must be in one folder (it is served as the site's root)")
    executable = require_chromium()
    from playwright.sync_api import sync_playwright

    with serve_folder(paths[0].parent) as base, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            return [_show(browser, base + path.name) for path in paths]
        finally:
            browser.close()


def _show(browser, url: str) -> ReportPage:
    page = browser.new_page()
    failed: list[str] = []
    errors: list[str] = []
    page.on("requestfailed", lambda req: failed.append(req.url))
    page.on("response", lambda resp: failed.append(resp.url) if resp.status >= 400 else None)
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(url, wait_until="load", timeout=LOAD_TIMEOUT_MS)
    shown = page.evaluate(_READ_PAGE)
    page.close()
    return ReportPage(url=url, title=shown["title"], verdict=shown["verdict"],
                      images=[Image(i["src"], i["w"]) for i in shown["images"]], steps=shown["steps"],
                      steps_full=shown["steps_full"], slos=shown["slos"], failed_requests=failed,
                      console_errors=errors)
