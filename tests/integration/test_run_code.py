"""run_code against the real guest agent in a real microVM."""

from __future__ import annotations

import asyncio
import base64

import pytest

from ember import errors

pytestmark = pytest.mark.integration


async def test_state_persists_between_cells(shared_sandbox):
    await shared_sandbox.code.run("import json; x = 42")
    execution = await shared_sandbox.code.run("print(x, json.dumps({'ok': True}))")
    assert execution.stdout == '42 {"ok": true}\n'
    assert execution.error is None
    assert execution.execution_time_s > 0


async def test_guest_python_reports_its_version(shared_sandbox):
    execution = await shared_sandbox.code.run("import sys; print(sys.version)")
    assert execution.stdout.startswith("3.11")


async def test_open_files_survive_across_cells(shared_sandbox):
    await shared_sandbox.code.run("handle = open('/tmp/cells.txt', 'w'); handle.write('one ')")
    await shared_sandbox.code.run("handle.write('two'); handle.close()")
    execution = await shared_sandbox.code.run("print(open('/tmp/cells.txt').read())")
    assert execution.stdout == "one two\n"


async def test_trailing_expression_comes_back_as_rich_results(shared_sandbox):
    code = """
class Table:
    def _repr_html_(self):
        return "<table><tr><td>1</td></tr></table>"
    def _repr_json_(self):
        return {"rows": 1}
    def _repr_png_(self):
        return b"\\x89PNG fake"
    def __repr__(self):
        return "Table(1)"
Table()
"""
    execution = await shared_sandbox.code.run(code)
    (result,) = execution.results
    assert result.is_main_result
    assert result.data["text/plain"] == "Table(1)"
    assert result.data["text/html"] == "<table><tr><td>1</td></tr></table>"
    assert result.data["application/json"] == '{"rows": 1}'
    assert base64.b64decode(result.data["image/png"]) == b"\x89PNG fake"


async def test_a_display_method_that_raises_costs_its_format_and_says_why(shared_sandbox):
    code = """
class Broken:
    def _repr_html_(self):
        raise ValueError("no html today")
    def _repr_markdown_(self):
        return "**fine**"
    def __repr__(self):
        return "Broken()"
Broken()
"""
    execution = await shared_sandbox.code.run(code)
    assert execution.error is None
    (result,) = execution.results
    assert result.data["text/plain"] == "Broken()"
    assert result.data["text/markdown"] == "**fine**"
    assert "text/html" not in result.data
    assert "Broken._repr_html_() failed: ValueError('no html today')" in execution.stderr


async def test_display_adds_results_in_order(shared_sandbox):
    execution = await shared_sandbox.code.run("display(1); display('two'); 3")
    assert [r.data["text/plain"] for r in execution.results] == ["1", "'two'", "3"]
    assert [r.is_main_result for r in execution.results] == [False, False, True]


async def test_output_streams_while_the_cell_is_still_running(shared_sandbox):
    seen: list[tuple[str, bool]] = []
    task: asyncio.Task | None = None

    def on_stdout(text: str) -> None:
        seen.append((text, task is not None and task.done()))

    task = asyncio.create_task(
        shared_sandbox.code.run(
            "import time, sys\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('second')\n"
            "print('oops', file=sys.stderr)",
            on_stdout=on_stdout,
        )
    )
    execution = await task
    assert seen[0] == ("first\n", False)
    assert execution.stdout == "first\nsecond\n"
    assert execution.stderr == "oops\n"


async def test_a_partial_line_streams_when_flushed(shared_sandbox):
    seen: list[str] = []
    task = asyncio.create_task(
        shared_sandbox.code.run(
            "import time\nprint('50%', end='', flush=True)\ntime.sleep(1)\nprint(' done')",
            on_stdout=seen.append,
        )
    )
    while not seen and not task.done():
        await asyncio.sleep(0.05)
    assert not task.done() and seen == ["50%"]
    assert (await task).stdout == "50% done\n"


async def test_a_scratch_cell_leaves_no_variables_and_no_count(shared_sandbox):
    before = (await shared_sandbox.code.run("kept_by_user = 1")).execution_count
    scratch = await shared_sandbox.code.run("print('warm')\nleaked = 2\n1 + 1", scratch=True)
    assert scratch.stdout == "warm\n" and scratch.results[0].data["text/plain"] == "2"
    after = await shared_sandbox.code.run("[n for n in ('kept_by_user', 'leaked') if n in globals()]")
    assert after.results[0].data["text/plain"] == "['kept_by_user']"
    assert after.execution_count == before + 1
    with pytest.raises(errors.InvalidRequestError):
        await shared_sandbox.code.run("true", language="bash", scratch=True)


async def test_the_time_limit_covers_an_interpreter_that_hangs_while_starting(shared_sandbox):
    # A .pth file in site-packages runs at every interpreter's start: this one blocks
    # while /tmp/hang exists.
    pth = "/usr/local/lib/python3.11/dist-packages/ember_test_hang.pth"
    hang = "import os, time; exec(\"while os.path.exists('/tmp/hang'): time.sleep(0.1)\")\n"
    await shared_sandbox.commands.run(f"mkdir -p {pth.rsplit('/', 1)[0]} && touch /tmp/hang")
    await shared_sandbox.files.write(pth, hang.encode())
    try:
        context = await shared_sandbox.code.create_context()
        stuck = await shared_sandbox.code.run("1", context_id=context.context_id, timeout_s=2)
        assert stuck.timed_out and stuck.restarted and stuck.error is not None
        assert stuck.error.name == "TimeoutError"
        await shared_sandbox.commands.run("rm /tmp/hang")
        after = await shared_sandbox.code.run("40 + 2", context_id=context.context_id, timeout_s=60)
        assert after.results[0].data["text/plain"] == "42"
    finally:
        await shared_sandbox.commands.run(f"rm -f /tmp/hang {pth}")


async def test_exception_is_structured_and_the_repl_survives(shared_sandbox):
    await shared_sandbox.code.run("survivor = 'still here'")
    execution = await shared_sandbox.code.run("def f():\n    return 1 / 0\nf()")
    assert execution.error is not None
    assert execution.error.name == "ZeroDivisionError"
    assert execution.error.value == "division by zero"
    assert 'File "<cell-' in execution.error.traceback and "return 1 / 0" in execution.error.traceback
    after = await shared_sandbox.code.run("survivor")
    assert after.results[0].data["text/plain"] == "'still here'"


async def test_syntax_error_is_reported_not_fatal(shared_sandbox):
    execution = await shared_sandbox.code.run("def broken(:\n    pass")
    assert execution.error is not None and execution.error.name == "SyntaxError"
    assert not execution.restarted


async def test_timeout_interrupts_a_busy_loop_and_keeps_the_state(shared_sandbox):
    await shared_sandbox.code.run("kept = 7")
    execution = await shared_sandbox.code.run("while True: pass", timeout_s=1.5)
    assert execution.timed_out
    assert not execution.restarted
    assert execution.error is not None and execution.error.name == "KeyboardInterrupt"
    after = await shared_sandbox.code.run("kept * 6")
    assert after.results[0].data["text/plain"] == "42"


async def test_wedged_repl_is_restarted_and_says_so(shared_sandbox):
    await shared_sandbox.code.run("lost = 1")
    execution = await shared_sandbox.code.run(
        "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass", timeout_s=1
    )
    assert execution.timed_out and execution.restarted
    assert "restarted" in execution.error.value
    after = await shared_sandbox.code.run("print('fresh'); 'lost' in globals()")
    assert after.stdout == "fresh\n"
    assert after.results[0].data["text/plain"] == "False"


@pytest.mark.parametrize(
    "killer",
    ["import os; os._exit(1)", "import ctypes; ctypes.string_at(0)"],
    ids=["os._exit", "segfault"],
)
async def test_code_that_kills_the_repl_gets_an_error_and_a_fresh_repl(shared_sandbox, killer):
    execution = await shared_sandbox.code.run(killer)
    assert execution.restarted
    assert execution.error is not None and execution.error.name == "ReplDied"
    after = await shared_sandbox.code.run("print(2 + 2)")
    assert after.stdout == "4\n" and after.error is None


async def test_contexts_are_independent(shared_sandbox):
    first = await shared_sandbox.code.create_context()
    second = await shared_sandbox.code.create_context()
    await shared_sandbox.code.run("value = 'first'", context_id=first.context_id)
    await shared_sandbox.code.run("value = 'second'", context_id=second.context_id)
    one = await shared_sandbox.code.run("value", context_id=first.context_id)
    two = await shared_sandbox.code.run("value", context_id=second.context_id)
    assert one.results[0].data["text/plain"] == "'first'"
    assert two.results[0].data["text/plain"] == "'second'"
    listed = {c.context_id for c in await shared_sandbox.code.list_contexts()}
    assert {first.context_id, second.context_id} <= listed
    await shared_sandbox.code.delete_context(first.context_id)
    with pytest.raises(errors.ContextNotFoundError):
        await shared_sandbox.code.run("value", context_id=first.context_id)


async def test_bash_context_keeps_cwd_and_exports(shared_sandbox):
    await shared_sandbox.code.run(
        "mkdir -p /tmp/work && cd /tmp/work && export GREETING=hello", language="bash"
    )
    execution = await shared_sandbox.code.run('pwd; echo "$GREETING"', language="bash")
    assert execution.stdout == "/tmp/work\nhello\n"
    failed = await shared_sandbox.code.run("false", language="bash")
    assert failed.exit_code == 1 and failed.error is not None


async def test_bash_timeout_restarts_the_shell_where_it_was(shared_sandbox):
    await shared_sandbox.code.run("cd /tmp && export KEEP=yes", language="bash")
    execution = await shared_sandbox.code.run("sleep 30", language="bash", timeout_s=1)
    assert execution.timed_out
    after = await shared_sandbox.code.run('pwd; echo "$KEEP"', language="bash")
    assert after.stdout == "/tmp\nyes\n"


async def test_creation_env_is_seen_by_code(shared_sandbox):
    execution = await shared_sandbox.code.run("import os; print(os.environ['MODE'])")
    assert execution.stdout == "test\n"
    shell = await shared_sandbox.code.run("echo $MODE", language="bash")
    assert shell.stdout == "test\n"


async def test_per_cell_env_does_not_leak_into_later_cells(shared_sandbox):
    execution = await shared_sandbox.code.run(
        "import os; print(os.environ['ONLY_HERE'])", env={"ONLY_HERE": "1"}
    )
    assert execution.stdout == "1\n"
    later = await shared_sandbox.code.run("import os; print(os.environ.get('ONLY_HERE'))")
    assert later.stdout == "None\n"


async def test_unknown_language_is_an_invalid_request(shared_sandbox):
    with pytest.raises(errors.InvalidRequestError):
        await shared_sandbox.code.run("1", language="cobol")
