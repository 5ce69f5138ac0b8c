"""How a request's failure leaves an app: every one as an ``EmberError``, rendered by the app.

Ember's API and E2B's control plane render errors differently (``{"code", "message"}``
with Ember's codes, or E2B's ``{"code": status, "message"}``), but fail the same ways:
an Ember error, a request that does not validate, a route that is not there or not
for that method, a bug. ``install`` turns each into the ``EmberError`` it is and
hands it to the app's renderer, so both apps agree on statuses and messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember import errors

log = logging.getLogger("ember.server")

Render = Callable[[errors.EmberError], JSONResponse]


def install(app: FastAPI, render: Render) -> None:
    """Install the app's exception handlers; ``render`` makes the response of an error."""

    @app.exception_handler(errors.EmberError)
    async def ember_error(request: Request, exc: errors.EmberError) -> JSONResponse:
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return render(errors.InvalidRequestError(validation_problems(exc)))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = render(_http_failure(exc))
        response.headers.update(exc.headers or {})  # a 405's Allow
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return render(errors.InternalError(f"{type(exc).__name__}: {exc}"))


def validation_problems(exc: RequestValidationError) -> str:
    """Each invalid field with what is wrong with it (``body.`` left out: it is the usual place)."""
    problems = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in exc.errors()
    )
    return problems or "invalid request"


def _http_failure(exc: StarletteHTTPException) -> errors.EmberError:
    """The framework's own refusals: no such route, not that method, a body it could not parse."""
    detail = str(exc.detail)
    if exc.status_code == 404:
        return errors.RouteNotFoundError(detail)
    if exc.status_code == 405:
        return errors.MethodNotAllowedError(detail)
    error = errors.InvalidRequestError(detail) if exc.status_code < 500 else errors.InternalError(detail)
    error.status = exc.status_code
    return error
