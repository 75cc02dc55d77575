"""The hottest routes (unit pages) without FastAPI's machinery: plain parameters, and
no router.

FastAPI resolves and validates every parameter of every request through its
dependency system: ~45 us of a unit request that otherwise takes ~0.4 ms (JSON).
`PlainParamsRoute` calls the endpoint directly when every parameter is plain: a path
parameter that is a `str`, or an `int` written as ASCII digits; a query parameter
that is `str | None`, or an `int` with a default, absent or written as ASCII digits.
Anything else (a negative or malformed number, a missing parameter) goes through
FastAPI's own handler, so errors, status codes and the OpenAPI schema are exactly
FastAPI's. The endpoint must be async, return a Response,
and take `request` plus such parameters only (checked when the route is built).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from actscope.app import urls as site_urls

_QUERY = "query"
_QUERY_INT = "query int"
_DIGITS = 18  # longer numbers go to FastAPI's parsing (an int64 holds any 18 digits)


class PlainParamsRoute(APIRoute):
    def plain_kwargs(self, request: Request) -> dict[str, Any] | None:
        """The endpoint's arguments when every parameter is plain, else None."""
        path, query = request.path_params, request.query_params
        kwargs: dict[str, Any] = {"request": request}
        for name, kind in self._plan:
            if kind == _QUERY:
                kwargs[name] = query.get(name)
                continue
            if kind == _QUERY_INT:
                given = query.get(name)
                if given is None:
                    kwargs[name] = self._defaults[name]
                elif given.isascii() and given.isdigit() and len(given) <= _DIGITS:
                    kwargs[name] = int(given)
                else:
                    return None  # FastAPI's own parsing and 422
                continue
            value = path.get(name)
            if value is None:
                return None
            if kind == "int":
                if not (value.isascii() and value.isdigit()):
                    return None  # FastAPI's own parsing and 422
                value = int(value)
            kwargs[name] = value
        return kwargs

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        default = super().get_route_handler()
        endpoint = self.endpoint
        if not inspect.iscoroutinefunction(endpoint):
            raise TypeError(f"{endpoint.__name__}: PlainParamsRoute needs an async endpoint")
        path_names = {p.name for p in self.dependant.path_params}
        hints = typing.get_type_hints(endpoint, include_extras=True)

        def plain_type(name: str) -> Any:  # Annotated[int, Path(...)] is plain int
            hint = hints.get(name)
            return typing.get_args(hint)[0] if typing.get_origin(hint) is typing.Annotated else hint

        plan: list[tuple[str, str]] = []  # (name, "str" | "int" | "query" | "query int")
        defaults: dict[str, int] = {}
        for name, param in inspect.signature(endpoint).parameters.items():
            if name == "request":
                continue
            kind = plain_type(name)
            if name in path_names and kind is str:
                plan.append((name, "str"))
            elif name in path_names and kind is int:
                plan.append((name, "int"))
            elif name not in path_names and param.default is None and kind == str | None:
                plan.append((name, _QUERY))
            elif name not in path_names and kind is int and type(param.default) is int:
                plan.append((name, _QUERY_INT))
                defaults[name] = param.default
            else:
                raise TypeError(f"{endpoint.__name__}: parameter {name!r} is not plain")

        self._plan = plan
        self._defaults = defaults

        async def handler(request: Request) -> Response:
            kwargs = self.plain_kwargs(request)
            if kwargs is None:
                return await default(request)
            return await endpoint(**kwargs)

        return handler


class HotRoutes:
    """Pure ASGI, inside the response cache: a GET request for one of `routes` with plain
    parameters goes straight to its endpoint, without the router and the middleware
    between (~0.1 ms of a unit request that otherwise takes 0.5). Which route the router
    picks for a path depends on its parameters that are not numbers (another route may
    take `/api/m/sequences/3`), so the first request of each such combination takes the
    normal path, and the route the router chose is remembered. Requests with a
    parameter in `slow_params` (e.g. text for live inference, which may wait on the
    model) always take the normal path, and so does any request whose endpoint raises:
    it runs again through the app, whose handlers answer the error (GET is
    idempotent)."""

    MAX_LEARNED = 4096  # remembered (route, parameters) combinations; more go the normal way

    def __init__(self, app: ASGIApp, routes: list[PlainParamsRoute], slow_params: tuple[str, ...] = ("text",)):
        self.app = app
        self.routes = routes
        self.slow = slow_params
        self.learned: dict[tuple, bool] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "GET":
            return await self.app(scope, receive, send)
        path = site_urls.route_path(scope)
        for number, route in enumerate(self.routes):
            match = route.path_regex.match(path)
            if match is None:
                continue
            params = match.groupdict()
            scope["path_params"] = params
            request = Request(scope, receive, send)
            kwargs = route.plain_kwargs(request)
            if kwargs is None or any(kwargs.get(name) is not None for name in self.slow):
                break
            key = (number, *(params[name] for name, kind in route._plan if kind == "str"))
            known = self.learned.get(key)
            if known is None:
                await self.app(scope, receive, send)
                if len(self.learned) < self.MAX_LEARNED:
                    self.learned[key] = scope.get("endpoint") is route.endpoint
                return
            if not known:
                break
            try:
                response = await route.endpoint(**kwargs)
            except Exception:
                break  # the app answers it, as it answers any error
            scope["route"], scope["endpoint"] = route, route.endpoint
            return await response(scope, receive, send)
        await self.app(scope, receive, send)


async def answer(from_memory: bool, endpoint: Callable[..., Response], *args: Any) -> Response:
    """endpoint(*args): on the event loop when all it reads is in memory (pure CPU: a hop
    to the threadpool would only add thread switches), else in the threadpool (it may
    query DuckDB or wait for the model)."""
    if from_memory:
        return endpoint(*args)
    return await run_in_threadpool(endpoint, *args)
