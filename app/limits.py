"""Limits on what one client may ask of the server: the size of a request body, and
live inference, counted in model tokens per minute.

A client is its IP address: the connection's peer, or, when the peer is a proxy named
in `trusted_proxies`, the address that proxy put in X-Forwarded-For (read from the
right, past every trusted proxy). Nothing else is believed.

`Limits` (pure ASGI) names the client of each request in a context variable, which the
live service reads when it is about to run the model (`reserve_live`), and answers 413
to a body over the limit without reading the rest of it, whether or not the request
announced its length (or announced a wrong one).
"""

from __future__ import annotations

import ipaddress
import math
import threading
import time
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from actscope.app import schemas
from actscope.app.errors import AppError, error_body

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# OpenAPI: the answers of the routes these limits apply to.
BODY_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": schemas.ErrorOut, "description": "Request body over the server's limit (`max_body_bytes`)"},
}
OVER_BUDGET: dict[int | str, dict[str, Any]] = {
    429: {
        "model": schemas.ErrorOut,
        "description": "This client's live-inference budget (model tokens per minute) is spent; "
        "the `Retry-After` header says in how many seconds to try again",
        "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}},
    },
}


def parse_networks(spec: str | list[str]) -> list[IPNetwork]:
    """Addresses and networks ("10.0.0.1, 192.168.0.0/16") as networks; ValueError
    names the bad one."""
    items = spec.split(",") if isinstance(spec, str) else spec
    out = []
    for item in (i.strip() for i in items):
        if not item:
            continue
        try:
            out.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.1, 10.0.0.0/8)") from None
    return out


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_ip(scope: Scope, trusted: list[IPNetwork]) -> str:
    """The client's address: the peer, or past trusted proxies, X-Forwarded-For's
    rightmost address that is not one of them."""
    peer = (scope.get("client") or ("unknown", 0))[0]
    if not trusted:
        return peer

    def is_trusted(addr: str) -> bool:
        ip = _address(addr)
        return ip is not None and any(ip in net for net in trusted)

    if not is_trusted(peer):
        return peer
    forwarded = b",".join(v for k, v in scope.get("headers", []) if k == b"x-forwarded-for").decode("latin-1")
    hops = [h.strip() for h in forwarded.split(",") if h.strip()]
    client = peer
    for hop in reversed(hops):
        if _address(hop) is None:  # not an address: the chain can't be followed further
            break
        client = hop
        if not is_trusted(hop):
            break
    return client


# -- live inference budget -----------------------------------------------------------------
@dataclass
class _Bucket:
    level: float  # tokens the client may still run (negative: in debt)
    at: float  # when level was last brought up to date


class LiveBudget:
    """A token bucket per client: `tokens_per_minute` to spend, refilled continuously.

    A live run is admitted while the client's bucket is above zero. It reserves the
    most it can cost (a full context) before it runs, so concurrent requests can't all
    slip under the limit, and is charged what it ran when it ends."""

    def __init__(self, tokens_per_minute: int, clock=time.monotonic, max_clients: int = 10_000):
        self.capacity = float(tokens_per_minute)
        self.rate = tokens_per_minute / 60.0
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def _bucket(self, client: str, now: float) -> _Bucket:
        b = self._buckets.get(client)
        if b is None:
            if len(self._buckets) >= self.max_clients:
                self._forget_full(now)
            b = self._buckets[client] = _Bucket(self.capacity, now)
        b.level = min(self.capacity, b.level + (now - b.at) * self.rate)
        b.at = now
        return b

    def _forget_full(self, now: float) -> None:
        # A bucket that has refilled is the same as no bucket.
        for key in [k for k, b in self._buckets.items() if b.level + (now - b.at) * self.rate >= self.capacity]:
            del self._buckets[key]

    def reserve(self, client: str, tokens: int) -> None:
        """Take `tokens` from the client's bucket, or raise 429 if it is empty (the
        seconds until it is not are the error's `retry_after`)."""
        with self._lock:
            b = self._bucket(client, self.clock())
            if b.level <= 0:
                wait = max(1, math.ceil(-b.level / self.rate + 1e-9))
                raise OverBudget(wait, self.capacity)
            b.level -= tokens

    def refund(self, client: str, tokens: int) -> None:
        """Give back what a reservation did not use."""
        with self._lock:
            b = self._bucket(client, self.clock())
            b.level = min(self.capacity, b.level + tokens)


class OverBudget(AppError):
    def __init__(self, retry_after: int, capacity: float):
        super().__init__(
            429,
            f"Too much live inference from your address: the limit is {int(capacity):,} model tokens "
            f"per minute. Try again in {retry_after} s.",
        )
        self.retry_after = retry_after


@dataclass
class Client:
    """The client of the request being answered, and what the limits did to it."""

    ip: str
    budget: LiveBudget | None
    retry_after: int | None = None  # set when the budget refused a live run


_CLIENT: ContextVar[Client | None] = ContextVar("actscope_client", default=None)


@dataclass
class Reservation:
    client: Client | None
    tokens: int

    def settle(self, used: int) -> None:
        """Charge what the run used (the rest of the reservation goes back)."""
        c = self.client
        if c is not None and c.budget is not None and used < self.tokens:
            c.budget.refund(c.ip, self.tokens - used)


def reserve_live(max_tokens: int) -> Reservation:
    """Reserve a live run of up to `max_tokens` model tokens for the current request's
    client (no-op outside a request, or without a budget); 429 when it is spent."""
    c = _CLIENT.get()
    if c is None or c.budget is None:
        return Reservation(None, 0)
    try:
        c.budget.reserve(c.ip, max_tokens)
    except OverBudget as exc:
        c.retry_after = exc.retry_after
        raise
    return Reservation(c, max_tokens)


# -- the middleware --------------------------------------------------------------------------
class BodyTooLarge(HTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"The request body is larger than this server accepts ({limit:,} bytes).")


class Limits:
    """Names each request's client for the live budget, adds Retry-After to answers the
    budget refused, and stops a request body at `max_body_bytes`."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, budget: LiveBudget | None, trusted: list[IPNetwork]):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.budget = budget
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        length = next((v for k, v in scope.get("headers", []) if k == b"content-length"), None)
        if length is not None and length.strip().isdigit() and int(length) > limit:
            await _send_error(scope, send, 413, BodyTooLarge(limit).detail)
            return
        client = Client(client_ip(scope, self.trusted), self.budget)
        token = _CLIENT.set(client)
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:  # the rest is never read
                    raise BodyTooLarge(limit)
            return message

        async def send_marked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if client.retry_after is not None:
                    message = {**message, "headers": [*message.get("headers", []), _retry_after(client.retry_after)]}
            await send(message)

        try:
            await self.app(scope, limited_receive, send_marked)
        except BodyTooLarge as exc:  # raised where no handler turned it into an answer
            if started:
                raise
            await _send_error(scope, send, 413, exc.detail)
        finally:
            _CLIENT.reset(token)


def _retry_after(seconds: int) -> tuple[bytes, bytes]:
    return (b"retry-after", str(seconds).encode())


async def _send_error(scope: Scope, send: Send, status: int, message: str) -> None:
    """The error shape, as JSON (a body too large is refused before routing, where the
    app's HTML error page is not at hand; the connection is closed after it)."""
    import orjson

    body = orjson.dumps(error_body(status, message))
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
