"""One error shape for the whole app.

JSON (any path under /api): {"error": {"status": 404, "message": "..."}}.
HTML: a friendly page with the message and a way back. Never a 500 for bad input.
"""

from __future__ import annotations

import logging
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from actscope.app import urls as site_urls
from actscope.indexer.errors import ActscopeError

log = logging.getLogger("actscope.app")


class AppError(Exception):
    """An error to show to the visitor, with its HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def not_found(message: str) -> AppError:
    return AppError(404, message)


def bad_input(message: str) -> AppError:
    return AppError(422, message)


def unavailable(message: str) -> AppError:
    return AppError(503, message)


def error_body(status: int, message: str) -> dict:
    return {"error": {"status": status, "message": message}}


def _wants_json(path: str) -> bool:
    return path == "/api" or path.startswith("/api/") or path.endswith(".json")


# What a parameter must be, by pydantic's error type: our words, not pydantic's.
_MUST_BE = {
    "int_parsing": "a whole number",
    "int_type": "a whole number",
    "int_from_float": "a whole number",
    "float_parsing": "a number",
    "float_type": "a number",
    "finite_number": "a finite number",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "string_type": "text",
}


def _field_message(err: dict) -> str:
    """One failed parameter, said as the app's own checks say it: `k must be a whole
    number, not 'abc'.`"""
    loc = [str(x) for x in err.get("loc", ()) if x not in ("path", "query", "body")]
    name = ".".join(loc)
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    given = f", not {value!r}" if isinstance(value, str | int | float) and not isinstance(value, bool) else ""
    if not name:
        return "The request body must be a JSON object." if "body" in err.get("loc", ()) else "Invalid request."
    if kind == "missing":
        return f"{name} is required."
    if kind in _MUST_BE:
        return f"{name} must be {_MUST_BE[kind]}{given}."
    if kind == "string_too_short":
        least = ctx.get("min_length", 1)
        return f"{name} must not be empty." if least == 1 else f"{name} must be at least {least} characters long."
    if kind == "string_too_long":
        return f"{name} must be at most {ctx.get('max_length')} characters long."
    bounds = {
        "greater_than_equal": "at least",
        "greater_than": "above",
        "less_than_equal": "at most",
        "less_than": "below",
    }
    if kind in bounds:
        limit = next(iter(ctx.values()), "")
        return f"{name} must be {bounds[kind]} {limit}{given}."
    message = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
    return f"{name}: {message[:1].lower()}{message[1:]}"


def _validation_message(exc: RequestValidationError) -> str:
    return " ".join(_field_message(err) for err in exc.errors()) or "Invalid request."


def shown_path(path: str) -> str:
    """A request's path as a URL, percent-encoded as an address bar shows it: a
    right-to-left override or NUL in it stays inert in a message or link text."""
    return quote(path, safe="/:@!$&'()*+,;=~")


def respond(request: Request, status: int, message: str, headers: dict | None = None):
    path = shown_path(site_urls.route_path(request.scope))  # without the site's base path
    if _wants_json(path):
        return JSONResponse(error_body(status, message), status_code=status, headers=headers)
    templates = request.app.state.templates
    urls = site_urls.for_request(request)
    path = path.rstrip("/")
    parent = path.rsplit("/", 1)[0] or "/"
    context = {
        "status": status,
        "message": message,
        "title": f"{status} · actscope",
        "json_url": urls.api(urls.site(path)),
        "parent": urls.site(parent if parent != path else "/"),
    }
    return templates.TemplateResponse(
        request,
        "error.html",
        context,
        status_code=status,
        headers=headers,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def app_error(request: Request, exc: AppError):
        return respond(request, exc.status, exc.message)

    @app.exception_handler(ActscopeError)
    async def actscope_error(request: Request, exc: ActscopeError):
        return respond(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return respond(request, 422, _validation_message(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = (
                f"No page at {site_urls.for_request(request).site(shown_path(site_urls.route_path(request.scope)))}."
            )
        return respond(request, exc.status_code, message, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return respond(request, 500, "Internal error: this is a bug in actscope, please report it.")
