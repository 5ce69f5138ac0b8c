"""The shipped ``data`` template recipe (templates/data.sh), built and used for rich results.

The build itself is the session fixture ``data_template`` (conftest), shared
with the other tests that need the template.
"""

from __future__ import annotations

import base64

from e2e_support import SandboxFactory


def test_data_template_gives_dataframe_html_and_matplotlib_png(
    data_template: str, sandbox_factory: SandboxFactory
) -> None:
    sandbox = sandbox_factory(template=data_template)
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
