"""What the MCP server hands a model: content built from results and files, tool errors from Ember errors."""

from __future__ import annotations

import base64

import pytest
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import EmbeddedResource, ImageContent, TextContent

from ember import errors
from ember.client import Execution, Result
from ember.integrations.mcp.content import MAX_TEXT_CHARS, clip, execution_content, file_content
from ember.integrations.mcp.errors import tool_error
from ember.integrations.mcp.tools import _refuse_virtual_filesystems
from ember.protocol.messages import ExecutionError

PNG = b"\x89PNG\r\n\x1a\n" + b"rest of the image"


def test_short_text_is_kept_and_long_text_is_cut_with_a_note() -> None:
    assert clip("abc") == "abc"
    cut = clip("x" * (MAX_TEXT_CHARS + 5))
    assert cut.startswith("x" * MAX_TEXT_CHARS)
    assert "5 more characters cut" in cut


def test_a_rich_result_becomes_text_an_image_and_typed_text() -> None:
    result = Result(
        data={
            "text/plain": "<Swatch>",
            "image/png": base64.b64encode(PNG).decode(),
            "text/html": "<b>red</b>",
            "application/json": '{"colour": "red"}',
        },
        is_main_result=True,
    )
    blocks = execution_content(Execution(stdout="printed\n", results=[result]))
    assert [type(block) for block in blocks] == [
        TextContent,
        TextContent,
        ImageContent,
        TextContent,
        TextContent,
    ]
    assert blocks[0].text == "printed\n" and blocks[1].text == "<Swatch>"
    assert blocks[2].mime_type == "image/png" and base64.b64decode(blocks[2].data) == PNG
    assert blocks[3].text == "[text/html]\n<b>red</b>"
    assert blocks[4].text == '[application/json]\n{"colour": "red"}'


def test_an_exception_a_timeout_and_a_restart_are_said_in_the_content() -> None:
    error = ExecutionError(name="ZeroDivisionError", value="division by zero", traceback="Traceback...\n")
    texts = [
        block.text for block in execution_content(Execution(error=error, timed_out=True, restarted=True))
    ]
    assert texts[0] == "Traceback...\n"
    assert "ran out of time" in texts[1] and "restarted" in texts[2]
    assert [block.text for block in execution_content(Execution())] == ["[no output]"]


def test_files_become_images_text_or_a_blob() -> None:
    image = file_content(PNG, "ember://sb/app/a.png")
    assert isinstance(image, ImageContent) and image.mime_type == "image/png"
    assert file_content("héllo\n".encode(), "ember://sb/app/a.txt") == TextContent(text="héllo\n")
    blob = file_content(b"\xff\x00\xfe", "ember://sb/app/a.bin")
    assert isinstance(blob, EmbeddedResource)
    assert base64.b64decode(blob.resource.blob) == b"\xff\x00\xfe"  # type: ignore[union-attr]


def test_an_ember_error_becomes_a_tool_error_with_its_code_and_next_step() -> None:
    error = tool_error(errors.SandboxNotFoundError("no running sandbox 'abc'"))
    assert isinstance(error, ToolError)
    assert str(error).startswith("no running sandbox 'abc' [sandbox_not_found] ")
    assert "create_sandbox" in str(error)
    assert str(tool_error(errors.EmberError("odd", code="something_new"))) == "odd [something_new]"


@pytest.mark.parametrize("path", ["/proc/version", "/sys", "../dev/null", "//proc/x", "/app/../sys/kernel"])
def test_write_file_refuses_the_kernel_virtual_filesystems(path: str) -> None:
    with pytest.raises(ToolError, match=r"\[invalid_request\]"):
        _refuse_virtual_filesystems(path)


@pytest.mark.parametrize("path", ["notes.txt", "/app/proc/x", "/processes", "/tmp/dev"])
def test_write_file_accepts_other_paths(path: str) -> None:
    _refuse_virtual_filesystems(path)
