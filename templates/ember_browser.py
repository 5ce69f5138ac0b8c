"""Playwright against Debian's headless Chromium, in a sandbox of template ``browser``.

The template's REPL has already run ``playwright = sync_playwright().start()``,
``browser = launch(playwright)`` and ``page = new_page(browser)`` (and drawn a first
page with it), so a cell starts with a running browser and an open page::

    page.goto("http://127.0.0.1:8000/")
    screenshot(page)        # the cell's result: a PNG image

Installed by templates/browser.sh; Playwright's own browsers are never downloaded.
"""

from __future__ import annotations

from typing import Any

from playwright.sync_api import Browser, Page, Playwright

#: Debian's chromium-headless-shell: Chromium's headless build, without the desktop
#: browser's UI (its idle tabs kept an emulated guest's CPUs busy).
EXECUTABLE = "/usr/bin/chromium-headless-shell"
ARGS = (
    # The microVM is the sandbox (and Chromium runs as root in it); there is no GPU.
    "--no-sandbox",
    "--disable-gpu",
    # No traffic of Chromium's own: a sandbox's network carries only what its code asks for.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--disable-sync",
    "--no-pings",
    "--no-first-run",
    "--no-default-browser-check",
    "--metrics-recording-only",
)
#: Playwright's 30 s default is short for a guest whose CPU may be emulated (TCG).
TIMEOUT_MS = 300_000


def launch(playwright: Playwright, **options: Any) -> Browser:
    """Debian's headless Chromium, through Playwright (``options`` as for ``chromium.launch``)."""
    args = [*ARGS, *options.pop("args", [])]
    return playwright.chromium.launch(executable_path=EXECUTABLE, headless=True, args=args, **options)


def new_page(browser: Browser, **options: Any) -> Page:
    """A page in a context of its own (``options`` as for ``browser.new_context``), waiting up
    to `TIMEOUT_MS` by default."""
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT_MS)
    return context.new_page()


class PNG:
    """PNG bytes that ``run_code`` returns as an image result (as a cell's last value, or shown
    with ``display()``)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def _repr_png_(self) -> bytes:
        return self.data


def screenshot(page: Page, **options: Any) -> PNG:
    """``page.screenshot(**options)`` as an image result."""
    return PNG(page.screenshot(**options))
