"""The Python REPL process behind one run_code context (runs in the guest's python3).

Started by the agent as ``python3 -c <bootstrap> REQUEST_FD REPLY_FD``; it
imports nothing of Ember, so user code sees a plain interpreter whose
``__main__`` is the REPL namespace. For each JSON request line it runs the cell,
prints the end marker on stdout and stderr (so the agent knows all output of the
cell has been read), then writes one JSON reply line. Before the first request it
writes one empty JSON line: it has finished starting. SIGINT, which the agent
sends on a timeout, interrupts the cell as KeyboardInterrupt; it is blocked
between cells so it can never tear a reply.
"""

import ast
import asyncio
import base64
import builtins
import inspect
import io
import json
import linecache
import os
import signal
import sys
import time
import traceback
import types

_BINARY_MIMES = {"image/png", "image/jpeg"}
_REPR_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
    ("application/javascript", "_repr_javascript_"),
)
_results = []
_shown_figures = set()
_loop = None


def _encode(mime, value):
    if isinstance(value, tuple):  # (data, metadata) as IPython allows
        value = value[0]
    if value is None:
        return None
    if mime in _BINARY_MIMES:
        if isinstance(value, str):
            return value
        return base64.b64encode(value).decode()
    if mime == "application/json" and not isinstance(value, str):
        return json.dumps(value)
    return str(value)


def _figure_png(figure):
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _is_figure(value):
    figure_module = sys.modules.get("matplotlib.figure")
    return figure_module is not None and isinstance(value, figure_module.Figure)


def _formatter_failed(value, method_name, exc):
    """A display method that raises costs its format, not the cell (as in Jupyter): the user
    sees why on stderr, and the value's other formats are still shown."""
    os.write(2, f"{type(value).__name__}.{method_name}() failed: {exc!r}\n".encode(errors="replace"))


def format_value(value):
    """A Jupyter-style MIME bundle for one value."""
    bundle = {}
    mimebundle = getattr(value, "_repr_mimebundle_", None)
    if callable(mimebundle) and not isinstance(value, type):
        try:
            data = mimebundle()
            if isinstance(data, tuple):
                data = data[0]
            for mime, item in (data or {}).items():
                encoded = _encode(mime, item)
                if encoded is not None:
                    bundle[mime] = encoded
        except Exception as exc:
            _formatter_failed(value, "_repr_mimebundle_", exc)
    for mime, method_name in _REPR_METHODS:
        if mime in bundle or isinstance(value, type):
            continue
        method = getattr(value, method_name, None)
        if not callable(method):
            continue
        try:
            encoded = _encode(mime, method())
        except Exception as exc:
            _formatter_failed(value, method_name, exc)
            continue
        if encoded is not None:
            bundle[mime] = encoded
    if _is_figure(value) and "image/png" not in bundle:
        bundle["image/png"] = _figure_png(value)
        _shown_figures.add(id(value))
    bundle.setdefault("text/plain", repr(value))
    return bundle


def display(*values):
    """Show values as rich results of the running cell, as IPython's display() does."""
    for value in values:
        _results.append({"data": format_value(value), "is_main_result": False})


def _collect_figures():
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is None:
        return
    for number in pyplot.get_fignums():
        figure = pyplot.figure(number)
        if id(figure) not in _shown_figures:
            _results.append(
                {
                    "data": {"image/png": _figure_png(figure), "text/plain": repr(figure)},
                    "is_main_result": False,
                }
            )
    pyplot.close("all")


def _run(code, namespace):
    global _loop
    value = eval(code, namespace)
    if code.co_flags & inspect.CO_COROUTINE:
        if _loop is None:
            _loop = asyncio.new_event_loop()
        value = _loop.run_until_complete(value)
    return value


def _format_error(exc):
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(exc), exc, tb))
    return {"name": type(exc).__name__, "value": str(exc), "traceback": text}


def execute(code, filename, namespace):
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    error = None
    try:
        tree = ast.parse(code, filename, "exec")
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        _run(compile(tree, filename, "exec", flags=flags), namespace)
        if last is not None:
            expression = ast.Expression(last.value)
            value = _run(compile(expression, filename, "eval", flags=flags), namespace)
            if value is not None:
                namespace["_"] = value
                _results.append({"data": format_value(value), "is_main_result": True})
    except BaseException as exc:  # the cell's exceptions, SystemExit included, are the user's
        error = _format_error(exc)
    try:
        _collect_figures()
    except Exception as exc:
        error = error or _format_error(exc)
    return error


def _clear_pending_sigint():
    while signal.SIGINT in signal.sigpending():
        signal.sigtimedwait([signal.SIGINT], 0)


def _reseed():
    """Fresh seeds after a restore: forks of one snapshot must not draw the same numbers."""
    random_module = sys.modules.get("random")
    if random_module is not None:
        random_module.seed()
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


def main(request_fd, reply_fd):
    os.set_inheritable(request_fd, False)
    os.set_inheritable(reply_fd, False)
    requests = os.fdopen(request_fd, "rb")
    replies = os.fdopen(reply_fd, "wb")
    module = types.ModuleType("__main__")
    module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = module
    builtins.display = display
    sys.argv = [""]
    # Line-buffered, as at a terminal: print() writes its text and its end in two
    # calls, and unbuffered they could reach the agent, and the caller, as two chunks.
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    namespace = module.__dict__
    count = 0
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    replies.write(b"{}\n")
    replies.flush()
    for line in requests:
        request = json.loads(line)
        marker = request["marker"].encode()
        os.environ.update(request.get("set_env") or {})
        if request.get("reseed"):
            _reseed()
        # A scratch cell (warming the code path) leaves no variables and no count.
        scratch = bool(request.get("scratch"))
        count += not scratch
        saved_env = {key: os.environ.get(key) for key in request.get("env") or {}}
        os.environ.update(request.get("env") or {})
        _results.clear()
        _shown_figures.clear()
        _clear_pending_sigint()
        started = time.perf_counter()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        try:
            if scratch:
                error = execute(request["code"], "<scratch>", {"__builtins__": builtins})
            else:
                error = execute(request["code"], f"<cell-{count}>", namespace)
        except KeyboardInterrupt as exc:  # landed outside the cell's own try
            error = _format_error(exc)
        finally:
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        elapsed = time.perf_counter() - started
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        reply = {
            "results": list(_results),
            "error": error,
            "execution_count": count,
            "execution_time_s": elapsed,
        }
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception as exc:  # the cell replaced or closed it: the reply must still go
                os.write(2, f"could not flush {stream!r}: {exc!r}\n".encode(errors="replace"))
        os.write(1, marker)
        os.write(2, marker)
        try:
            payload = json.dumps(reply)
        except (TypeError, ValueError) as exc:
            payload = json.dumps(
                {
                    "error": {"name": type(exc).__name__, "value": str(exc), "traceback": ""},
                    "execution_count": count,
                }
            )
        replies.write(payload.encode() + b"\n")
        replies.flush()


if __name__ == "__ember_worker__":
    main(int(sys.argv[2]), int(sys.argv[3]))
