"""Opening report pages in headless Chromium (Debian's ``chromium``, driven by Playwright).

``check_pages`` loads each page from disk and fails on anything a reader would notice or an
auditor would object to: a console error or warning, an uncaught script exception, an image that
did not load (broken or zero-size data URI), a request that leaves the file (the report must be
self-contained), a relative link to a page that does not exist, a figure without its reading
guide. It saves a full-page screenshot of each page as a test artifact, and prints one page to
PDF to check that the print stylesheet breaks sections onto their own pages.

Artifacts go to ``$MODELSHIELD_TEST_ARTIFACTS`` (default ``test-artifacts/`` at the repository
root, git-ignored) under ``browser/<name>/``; CI keeps that folder.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def artifacts_dir(name: str) -> Path:
    """``<artifacts>/browser/<name>``, emptied and created."""
    base = Path(os.environ.get("MODELSHIELD_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    out = base / "browser" / re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def chromium_path() -> str:
    """The system Chromium executable; skips the test when none is installed."""
    for name in CHROMIUM_NAMES:
        if found := shutil.which(name):
            return found
    pytest.skip("no headless Chromium (apt-get install chromium); .ci/run installs it")


@dataclass
class PageReport:
    """What loading one page showed."""

    path: Path
    screenshot: Path
    console: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outside_requests: list[str] = field(default_factory=list)
    images: int = 0
    broken_images: list[str] = field(default_factory=list)
    dead_links: list[str] = field(default_factory=list)
    figures_without_guide: list[str] = field(default_factory=list)
    width: int = 0

    def problems(self) -> list[str]:
        out = [f"console: {m}" for m in self.console] + [f"page error: {e}" for e in self.errors]
        out += [f"request leaves the file: {u}" for u in self.outside_requests]
        out += [f"image did not load: {i}" for i in self.broken_images]
        out += [f"link to a missing page: {h}" for h in self.dead_links]
        out += [f"figure without a reading guide: {t}" for t in self.figures_without_guide]
        return out


_PAGE_FACTS = """() => {
  const guide = f => (f.querySelector('.how-to-read') || {textContent: ''}).textContent.trim();
  const ok = i => i.complete && i.naturalWidth > 0 && i.naturalHeight > 0;
  return {
    images: [...document.images].map(i => ({alt: i.alt || i.src.slice(0, 60), ok: ok(i)})),
    links: [...document.querySelectorAll('a[href]')].map(a => a.getAttribute('href')),
    unguided: [...document.querySelectorAll('figure')].filter(f => !guide(f))
      .map(f => (f.querySelector('img') || {}).alt || '?'),
    width: document.documentElement.scrollWidth,
  };
}"""


@contextmanager
def browser() -> Iterator[Any]:
    """A headless Chromium (Playwright) for the duration of the block."""
    executable = chromium_path()
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def open_page(b: Any, path: Path, out: Path, *, viewport_width: int = 1280) -> PageReport:
    """Load ``path`` in a fresh page of browser ``b``; screenshot it into ``out``."""
    shot = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{path.parent.name}-{path.stem}") + ".png"
    report = PageReport(path=path, screenshot=out / shot)
    page = b.new_page(viewport={"width": viewport_width, "height": 900})
    page.on("console", lambda m: report.console.append(f"{m.type}: {m.text}")
            if m.type in ("error", "warning", "assert") else None)
    page.on("pageerror", lambda e: report.errors.append(str(e)))

    def route(r: Any) -> None:
        scheme = urlparse(r.request.url).scheme
        if scheme in ("data", "file", "about", "blob"):
            r.continue_()
        else:  # a self-contained report fetches nothing: record the attempt and refuse it
            report.outside_requests.append(r.request.url)
            r.abort()

    page.route("**/*", route)
    page.goto(path.resolve().as_uri(), wait_until="load")
    facts = page.evaluate(_PAGE_FACTS)
    report.images = len(facts["images"])
    report.broken_images = [i["alt"] for i in facts["images"] if not i["ok"]]
    report.figures_without_guide = facts["unguided"]
    report.width = facts["width"]
    for href in facts["links"]:
        target = urlparse(href)
        if target.scheme or href.startswith("#"):
            continue
        if not (path.parent / unquote(target.path)).exists():
            report.dead_links.append(href)
    page.screenshot(path=str(report.screenshot), full_page=True)
    page.close()
    return report


def check_pages(paths: Sequence[Path], name: str, *, pdf: Path | None = None) -> list[PageReport]:
    """Open every page in headless Chromium; assert none has a problem (see the module doc).

    With ``pdf``, that page is also printed (A4, print stylesheet) into the artifacts folder
    and checked to have at least one page per report section.
    """
    out = artifacts_dir(name)
    with browser() as b:
        reports = [open_page(b, p, out) for p in paths]
        shots = [r.screenshot for r in reports]
        assert len(set(shots)) == len(shots), f"two pages would share a screenshot name: {shots}"
        if pdf is not None:
            page = b.new_page()
            page.goto(pdf.resolve().as_uri(), wait_until="load")
            sections = page.evaluate("document.querySelectorAll('main > section.card').length")
            target = out / (pdf.parent.name + "-" + pdf.stem + ".pdf")
            page.pdf(path=str(target), format="A4", print_background=True)
            page.close()
            pages = len(re.findall(rb"/Type\s*/Page[^s]", target.read_bytes()))
            assert pages >= sections > 0, f"{pdf}: {pages} PDF pages for {sections} sections"
    problems = [f"{r.path}: {p}" for r in reports for p in r.problems()]
    assert not problems, "\n".join(problems)
    for r in reports:
        assert r.screenshot.stat().st_size > 10_000, r.screenshot
    return reports
