"""The shipped ``browser`` template recipe (templates/browser.sh): Playwright drives Debian's
headless Chromium in the sandbox, and a screenshot comes back from ``run_code`` as a PNG result.

The build itself is the session fixture ``browser_template`` (conftest).
"""

from __future__ import annotations

import io

from e2e_support import SandboxFactory
from PIL import Image

PAGE = """<!DOCTYPE html>
<html><head><title>served here</title></head>
<body style="margin: 0; background: #ff8800"><h1>Served from the sandbox</h1></body></html>
"""
SERVE = "python3 -m http.server 8000 --bind 127.0.0.1 --directory /app/site"
UNTIL_SERVING = "until curl -sf http://127.0.0.1:8000/ >/dev/null; do sleep 0.1; done"
SHOOT = """
page.set_viewport_size({"width": 640, "height": 480})
page.goto("http://127.0.0.1:8000/")
print(page.title(), "|", page.inner_text("h1"))
screenshot(page)
"""


def test_browser_template_screenshots_a_page_served_in_the_sandbox(
    browser_template: str, sandbox_factory: SandboxFactory
) -> None:
    sandbox = sandbox_factory(template=browser_template)
    assert sandbox.info().memory_mb == 2048  # the template's size, whatever the caller asked
    sandbox.files.write("/app/site/index.html", PAGE)
    sandbox.commands.run(SERVE, background=True, timeout=None)
    assert sandbox.commands.run(UNTIL_SERVING, timeout=120).exit_code == 0  # a timeout kills it

    shot = sandbox.run_code(SHOOT, timeout=900)
    assert shot.error is None, shot.error
    assert shot.stdout == "served here | Served from the sandbox\n"
    png = shot.results[0].png
    assert png is not None, shot.results
    image = Image.open(io.BytesIO(png))
    image.load()  # decodes every pixel: a truncated or corrupt PNG raises here
    assert (image.format, image.size) == ("PNG", (640, 480))
    assert image.convert("RGB").getpixel((600, 440)) == (255, 136, 0)  # the page's own background
