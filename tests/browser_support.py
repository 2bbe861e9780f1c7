"""A real headless browser for the report tests: Debian's chromium through Playwright.

Debian's ``chromium`` package (installed by ``.ci/install-browser.sh``) is driven by
Playwright's Python package with ``executable_path``: no browser is ever downloaded
(``playwright install`` is never run).  Every request the page makes other than its own
file is aborted and counted; console errors and uncaught exceptions are collected.

``python3 tests/browser_support.py REPORT.html OUT.png [HEIGHT]`` takes a screenshot (the
README's docs/report.png is made this way, height 1250, from the report of
fixtures/lab_two_vcpu_flush_nosync.ftrace.txt).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

CHROMIUM = os.environ.get("KVMTRACE_CHROMIUM", "/usr/bin/chromium")
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run",
               "--disable-dev-shm-usage"]


def unavailable() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    if not os.path.exists(CHROMIUM):
        return (f"no chromium at {CHROMIUM} (Debian's chromium package; .ci/install-browser.sh "
                "installs it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install -e '.[test]')"
    return ""


@dataclass
class PageLog:
    """What the page did besides rendering."""

    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)       # everything but the page itself
    blocked: int = 0


class Browser:
    """One headless chromium with a fresh profile; ``open()`` loads a page from disk."""

    def __init__(self, pw, profile: str, javascript: bool, width: int, height: int) -> None:
        self.ctx = pw.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=LAUNCH_ARGS,
            java_script_enabled=javascript, viewport={"width": width, "height": height})
        self.width = width

    def open(self, html: Path):
        """(page, PageLog) with ``html`` loaded; every other request is aborted and counted."""
        url = html.resolve().as_uri()
        log = PageLog()
        page = self.ctx.new_page()

        def route(r) -> None:
            if r.request.url == url:
                r.continue_()
            else:
                log.blocked += 1
                r.abort()
        page.route("**/*", route)
        page.on("console", lambda m: log.console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: log.page_errors.append(str(e)))
        page.on("request", lambda r: log.requests.append(r.url) if r.url != url else None)
        page.goto(url, wait_until="load")
        return page, log


class Launcher:
    """One Playwright session; ``browser()`` starts a chromium with a fresh profile.
    (Playwright's sync API allows one session at a time in a process.)"""

    def __init__(self, pw) -> None:
        self.pw = pw
        self.open: list[tuple[Browser, str]] = []

    def browser(self, *, javascript: bool = True, width: int = 1100,
                height: int = 900) -> Browser:
        profile = tempfile.mkdtemp(prefix="kvmtrace-chromium-")
        b = Browser(self.pw, profile, javascript, width, height)
        self.open.append((b, profile))
        return b

    def close(self) -> None:
        for b, profile in self.open:
            try:
                b.ctx.close()
            finally:
                shutil.rmtree(profile, ignore_errors=True)
        self.open.clear()


@contextlib.contextmanager
def launcher() -> Iterator[Launcher]:
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        lau = Launcher(pw)
        try:
            yield lau
        finally:
            lau.close()


@contextlib.contextmanager
def browser(*, javascript: bool = True, width: int = 1100,
            height: int = 900) -> Iterator[Browser]:
    with launcher() as lau:
        yield lau.browser(javascript=javascript, width=width, height=height)


def shoot(b: Browser, html: Path, png: Path, clip_height: Optional[int] = None) -> PageLog:
    """Write a PNG of the page: all of it, or its top ``clip_height`` pixels."""
    page, log = b.open(html)
    if clip_height:
        page.screenshot(path=str(png), full_page=True,
                        clip={"x": 0, "y": 0, "width": b.width, "height": clip_height})
    else:
        page.screenshot(path=str(png), full_page=True)
    page.close()
    return log


def screenshot(html: Path, png: Path, *, width: int = 1100,
               clip_height: Optional[int] = None) -> PageLog:
    with browser(width=width) as b:
        return shoot(b, html, png, clip_height)


if __name__ == "__main__":
    why = unavailable()
    if why:
        sys.exit(f"browser_support: {why}")
    clip = int(sys.argv[3]) if len(sys.argv) > 3 else None
    result = screenshot(Path(sys.argv[1]), Path(sys.argv[2]), clip_height=clip)
    print(f"wrote {sys.argv[2]}; console errors {len(result.console_errors)}, "
          f"requests {len(result.requests)}")
