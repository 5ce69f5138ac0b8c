"""Ember results as MCP content: what a model reads (text, images), built from SDK objects.

A cell's PNG and JPEG results become ``ImageContent``; its other rich formats
(HTML, JSON, Markdown, LaTeX, SVG) become text headed by their MIME type, so the
model knows what it reads. Long output is cut with a note saying how to get the
rest, rather than flooding the model's context.
"""

from __future__ import annotations

import base64

from mcp.types import BlobResourceContents, ContentBlock, EmbeddedResource, ImageContent, TextContent

from ember.client import Execution, Result

#: Characters of one stream (stdout, stderr, a file, a result) handed to the model.
MAX_TEXT_CHARS = 100_000
_IMAGE_MIMES = ("image/png", "image/jpeg")
_TEXT_MIMES = ("text/html", "text/markdown", "text/latex", "image/svg+xml", "application/json")
_IMAGE_MAGIC = {
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"\xff\xd8\xff": "image/jpeg",
    b"GIF87a": "image/gif",
    b"GIF89a": "image/gif",
}


def clip(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """`text`, or its first `limit` characters and a note of how much was cut."""
    if len(text) <= limit:
        return text
    return (
        f"{text[:limit]}\n[... {len(text) - limit} more characters cut: write the output to a file "
        "and read it in parts (run_command with head, tail or grep)]"
    )


def execution_content(execution: Execution) -> list[ContentBlock]:
    """What a cell printed, displayed and raised, in the order a notebook shows it."""
    blocks: list[ContentBlock] = []
    if execution.stdout:
        blocks.append(TextContent(text=clip(execution.stdout)))
    if execution.stderr:
        blocks.append(TextContent(text="[stderr]\n" + clip(execution.stderr)))
    for result in execution.results:
        blocks.extend(result_content(result))
    if execution.error is not None:
        error = execution.error
        blocks.append(TextContent(text=clip(error.traceback or f"{error.name}: {error.value}")))
    if execution.timed_out:
        blocks.append(TextContent(text="[the cell ran out of time and was stopped; its state is kept]"))
    if execution.restarted:
        blocks.append(TextContent(text="[the REPL died and was restarted: variables and imports are lost]"))
    if not blocks:
        blocks.append(TextContent(text="[no output]"))
    return blocks


def result_content(result: Result) -> list[ContentBlock]:
    """One displayed value: its text form, its images, its other formats as text with their MIME type."""
    blocks: list[ContentBlock] = []
    if result.text is not None:
        blocks.append(TextContent(text=clip(result.text)))
    for mime in _IMAGE_MIMES:
        if mime in result.data:
            blocks.append(ImageContent(data=result.data[mime], mime_type=mime))  # already base64
    for mime in _TEXT_MIMES:
        if mime in result.data:
            blocks.append(TextContent(text=f"[{mime}]\n{clip(result.data[mime])}"))
    return blocks


def file_content(data: bytes, uri: str) -> ContentBlock:
    """A file as the model can best take it: an image, UTF-8 text, or else a base64 blob."""
    for magic, mime in _IMAGE_MAGIC.items():
        if data.startswith(magic):
            return ImageContent(data=base64.b64encode(data).decode(), mime_type=mime)
    try:
        return TextContent(text=clip(data.decode("utf-8")))
    except UnicodeDecodeError:
        blob = base64.b64encode(data).decode()
        return EmbeddedResource(
            resource=BlobResourceContents(uri=uri, mime_type="application/octet-stream", blob=blob)
        )
