"""A byte-bounded LRU of rendered responses.

The index is read-only, so a unit page (HTML or JSON) rendered once is valid for the
life of the server. Only successful GET responses are kept, keyed by path, query and
the htmx target (fragments differ from full pages).
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from fastapi import Request
from fastapi.responses import Response


class ResponseCache:
    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: OrderedDict[tuple, tuple[bytes, str]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(scope) -> tuple:
        """Base path, path, query and htmx target of a request's ASGI scope (the base
        path is in every link of a page)."""
        headers = dict(scope.get("headers") or [])
        hx = headers.get(b"hx-target", b"").decode("latin-1") if b"hx-request" in headers else ""
        return (scope.get("root_path", ""), scope["path"], scope.get("query_string", b"").decode("latin-1"), hx)

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
        media_type = response.headers.get("content-type", "application/octet-stream")
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= len(old[0])
            self._items[key] = (body, media_type)
            self._bytes += len(body)
            while self._bytes > self.max_bytes and self._items:
                _, (dropped, _) = self._items.popitem(last=False)
                self._bytes -= len(dropped)
        return response


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
