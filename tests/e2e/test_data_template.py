"""The shipped ``data`` template recipe (templates/data.sh), built and used for rich results.

It downloads Debian's numpy, pandas and matplotlib packages on the host (apt, as
on any machine that runs setup) and builds the template on the test daemon.
"""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from e2e_support import Daemon, SandboxFactory, run_cli

from ember import Sandbox

RECIPE = Path(__file__).resolve().parents[2] / "templates" / "data.sh"


def test_data_template_gives_dataframe_html_and_matplotlib_png(
    daemon: Daemon, sandbox_factory: SandboxFactory
) -> None:
    base = run_cli(daemon, "template", "build", "base", timeout_s=600)
    assert base.returncode == 0, base.stderr
    env = {**daemon.cli_env, "PYTHON": sys.executable, "EMBER": f"{sys.executable} -m ember"}
    built = subprocess.run(["bash", str(RECIPE)], env=env, capture_output=True, text=True, timeout=2400)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    assert "template data saved" in built.stderr

    sandbox = sandbox_factory(template="data")
    frame = sandbox.run_code("pandas.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3, 19]})")
    assert frame.error is None, frame.error
    html = frame.results[0].html
    assert html is not None and "<table" in html and "Oslo" in html
    figure = sandbox.run_code(
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 4, 9])\nfig"
    )
    assert figure.error is None, figure.error
    png = figure.results[0].data["image/png"]
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    for name in ("data", "base"):
        Sandbox.delete_template(name, base_url=daemon.url, api_key=daemon.api_key)
