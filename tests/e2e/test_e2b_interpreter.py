"""E2B's code interpreter SDK (``e2b_code_interpreter``) against Ember's REPL contexts."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

from e2b_code_interpreter import AsyncSandbox, Sandbox


def test_run_code_keeps_state_and_contexts_are_separate(e2b_env: None) -> None:
    with Sandbox.create(timeout=600) as sandbox:
        assert sandbox.run_code("x = 41").error is None
        execution = sandbox.run_code("print('side'); x + 1")
        assert execution.text == "42" and "".join(execution.logs.stdout) == "side\n"
        assert execution.execution_count == 2
        failed = sandbox.run_code("1 / 0")
        assert failed.error is not None and failed.error.name == "ZeroDivisionError"

        context = sandbox.create_code_context(cwd="/tmp")
        assert sandbox.run_code("import os; os.getcwd()", context=context).text == "'/tmp'"
        missing = sandbox.run_code("x", context=context)
        assert missing.error is not None and missing.error.name == "NameError"
        assert context.id in [c.id for c in sandbox.list_code_contexts()]
        sandbox.run_code("y = 1", context=context)
        sandbox.restart_code_context(context)
        assert sandbox.run_code("y", context=context).error.name == "NameError"
        sandbox.remove_code_context(context)
        home = sandbox.create_code_context()
        assert sandbox.run_code("os.getcwd()", context=home).error.name == "NameError"
        assert sandbox.run_code("import os; os.getcwd()", context=home).text == "'/home/user'"
        assert context.id not in [c.id for c in sandbox.list_code_contexts()]
        assert "".join(sandbox.run_code("echo $((6 * 7))", language="bash").logs.stdout) == "42\n"


async def test_async_run_code_streams_stdout(e2b_env: None) -> None:
    sandbox = await AsyncSandbox.create(timeout=600)
    try:
        seen: list[str] = []
        execution = await sandbox.run_code(
            "for i in range(3): print(i)", on_stdout=lambda message: seen.append(message.line)
        )
        assert execution.error is None and "".join(seen) == "0\n1\n2\n"
    finally:
        await sandbox.kill()


def test_dataframe_html_and_matplotlib_png_from_the_data_template(e2b_env: None, data_template: str) -> None:
    with Sandbox.create(template=data_template, timeout=600) as sandbox:
        frame = sandbox.run_code(
            "import pandas\npandas.DataFrame({'city': ['Oslo', 'Lima'], 'temp': [3, 19]})"
        )
        assert frame.error is None, frame.error
        assert frame.results[0].html is not None and "<table" in frame.results[0].html
        assert "Oslo" in frame.results[0].html
        figure = sandbox.run_code(
            "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.plot([1, 4, 9])\nfig"
        )
        assert figure.error is None, figure.error
        assert base64.b64decode(figure.results[0].png).startswith(b"\x89PNG\r\n\x1a\n")


def test_the_readme_example_runs(e2b_env: dict[str, str]) -> None:
    """README's "Coming from E2B" program, as printed there, with the environment `ember e2b-env` gives."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    program = readme.split("## Coming from E2B", 1)[1].split("python - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    ran = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    lines = ran.stdout.splitlines()
    assert lines[0] == "42" and lines[1].startswith("ember-") and lines[-1] == "hi", ran.stdout
