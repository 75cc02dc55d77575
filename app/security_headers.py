"""Security headers on every response: a Content-Security-Policy, a frame policy,
nosniff and a Referrer-Policy (pure ASGI, outside the response cache, so cached pages
carry them too).

The policy allows no inline script anywhere (htmx, app.js and the Swagger UI set-up
are files under /static) and no <style> element; style attributes stay allowed, for
the per-token tints (`style="--a:0.42"`). Only pages under /embed/ may be framed.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actscope.app import urls as site_urls

# The favicon is a data: URL (urls.FAVICON); everything else comes from the site.
_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; style-src-attr 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'"
)
# Visitors' text is in page URLs: never send it to another site.
REFERRER_POLICY = "same-origin"
CSP = f"{_POLICY}; frame-ancestors 'none'"
# The embed view is made to be framed by blogs and notebooks, on any site.
EMBED_CSP = f"{_POLICY}; frame-ancestors *"
EMBED_PREFIX = "/embed/"

_COMMON = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", REFERRER_POLICY.encode())]
_PAGE = [(b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY"), *_COMMON]
_EMBED = [(b"content-security-policy", EMBED_CSP.encode()), *_COMMON]
_NAMES = {name for name, _ in _PAGE}


def framable(scope: Scope) -> bool:
    """Whether the request is for the embed view (the only framable pages)."""
    return site_urls.route_path(scope).startswith(EMBED_PREFIX)


class SecurityHeaders:
    """Adds the headers to every HTTP response (replacing any a route set)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = _EMBED if framable(scope) else _PAGE

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in _NAMES]
                message = {**message, "headers": headers + extra}
            await send(message)

        await self.app(scope, receive, send_with_headers)
