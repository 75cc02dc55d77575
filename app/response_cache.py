"""A byte-bounded LRU of rendered responses.

The index is read-only, so a unit page (HTML or JSON) rendered once is valid for the
life of the server. Only successful GET responses are kept, keyed by the model, path,
query and htmx target (fragments differ from full pages). When one index file is
rebuilt in place, the new app's cache adopts the old one's pages of the other models.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from fastapi import Request
from fastapi.responses import Response

from actscope.app.urls import route_path

# Paths whose second part, not their first, names the model (/api/{model}/..., /embed/...).
_PREFIXES = ("api", "embed")


def model_of(scope) -> str:
    """The model a request is about: the first part of its route path, or the second
    after /api or /embed ("" for the home page)."""
    parts = route_path(scope).split("/", 3)  # "", first, second, rest
    if len(parts) > 2 and parts[1] in _PREFIXES:
        return parts[2]
    return parts[1] if len(parts) > 1 else ""


class ResponseCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(scope) -> tuple:
        """Model, base path, path, query and htmx target of a request's ASGI scope (the
        base path is in every link of a page)."""
        headers = dict(scope.get("headers") or [])
        hx = headers.get(b"hx-target", b"").decode("latin-1") if b"hx-request" in headers else ""
        query = scope.get("query_string", b"").decode("latin-1")
        return (model_of(scope), scope.get("root_path", ""), scope["path"], query, hx)

    def adopt(self, other: ResponseCache, models: set[str]) -> None:
        """Take over `other`'s responses about `models` (oldest first, within budget)."""
        if self.max_bytes <= 0:
            return
        with other._lock:
            items = [(k, v) for k, v in other._items.items() if k[0] in models]
        for key, (body, media_type) in items:
            self._keep(key, body, media_type)

    def lookup(self, key: tuple) -> tuple[bytes, str] | None:
        """(body, media type) of a cached response, or None."""
        if self.max_bytes <= 0:
            return None
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
        return item

    def put_for(self, request: Request, response: Response) -> Response:
        """Keep `response` as the answer to `request`; the middleware serves it next time."""
        return self.put(self.key(request.scope), response)

    def put(self, key: tuple, response: Response) -> Response:
        body = getattr(response, "body", None)
        if self.max_bytes <= 0 or response.status_code != 200 or body is None or len(body) > self.max_bytes // 8:
            return response
        self._keep(key, body, response.headers.get("content-type", "application/octet-stream"))
        return response

    def _keep(self, key: tuple, body: bytes, media_type: str) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._items[key] = (body, media_type)
            self._bytes += len(body)
            while self._bytes > self.max_bytes and self._items:
                _, (dropped, _) = self._items.popitem(last=False)
                self._bytes -= len(dropped)


class CacheMiddleware:
    """Answer GET requests whose response is cached before routing (pure ASGI, no
    threadpool hop); everything else goes to the app unchanged."""

    def __init__(self, app, cache: ResponseCache):
        self.app = app
        self.cache = cache

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "GET":
            item = self.cache.lookup(self.cache.key(scope))
            if item is not None:
                body, media_type = item
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [
                            (b"content-type", media_type.encode("latin-1")),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
