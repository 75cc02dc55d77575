"""Limits: the request body (413 in the error shape, before the body is read) and each
client's live-inference budget in model tokens per minute (429 with Retry-After), with
clients told apart by IP and X-Forwarded-For believed only from trusted proxies."""

from __future__ import annotations

import asyncio
import json
import math
import socket
import time

import pytest

from fixtures_web import make_client

M, S = "tiny", "0-mlp"
BUDGET = 40  # model tokens per minute, for the budget tests
PROXY = "10.9.9.9"


# -- the body limit -------------------------------------------------------------------------
def test_default_body_limit_fits_the_longest_text_json_escaped(client, web_index):
    """The longest text the server accepts, in the costliest JSON escaping (characters
    outside the BMP as two \\uXXXX escapes), with every other field, is under the limit."""
    from actscope.app.settings import Settings

    settings = Settings(index_file=web_index)
    body = json.dumps({"text": "\U0001f600" * settings.max_text_chars, "source": S, "index": 12345, "k": 100})
    assert len(body.encode()) <= settings.body_limit < len(body.encode()) + 8192
    resp = client.post(f"/api/{M}/activations", content=body, headers={"content-type": "application/json"})
    assert resp.status_code == 404  # read whole and answered (unit 12345 of 0-mlp does not exist)
    assert "12345" in resp.json()["error"]["message"]


def test_a_body_over_the_limit_is_413_in_the_error_shape(client):
    limit = client.app.state.settings.body_limit
    over = b'{"text": "' + b"a" * limit + b'", "source": "0-mlp"}'
    resp = client.post(f"/api/{M}/activations", content=over, headers={"content-type": "application/json"})
    assert resp.status_code == 413
    assert resp.json() == {
        "error": {"status": 413, "message": f"The request body is larger than this server accepts ({limit:,} bytes)."}
    }


def _asgi_post(app, chunks: list[bytes], headers: list[tuple[bytes, bytes]]):
    """POST /api/tiny/activations straight through the ASGI app, the body in `chunks`;
    returns (status, body, bytes of the request body the app pulled)."""
    pulled = 0
    queue = list(chunks)
    sent: list[dict] = []

    async def receive():
        nonlocal pulled
        if not queue:
            return {"type": "http.disconnect"}
        chunk = queue.pop(0)
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(queue)}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": f"/api/{M}/activations",
        "raw_path": f"/api/{M}/activations".encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], json.loads(body), pulled


@pytest.mark.parametrize("length", [None, b"20"], ids=["no-content-length", "lying-content-length"])
def test_the_limit_stops_reading_a_streamed_body(client, length):
    """Without a Content-Length, or with one that lies, the body is counted as it
    arrives: the app stops pulling it one chunk past the limit."""
    limit = client.app.state.settings.body_limit
    chunk = b" " * 65536
    chunks = [b'{"text": "'] + [chunk] * 64  # 4 MB
    headers = [] if length is None else [(b"content-length", length)]
    status, body, pulled = _asgi_post(client.app, chunks, headers)
    assert status == 413 and body["error"]["status"] == 413
    assert limit < pulled <= limit + len(chunk) + 16


def test_an_announced_length_over_the_limit_is_refused_unread(client):
    limit = client.app.state.settings.body_limit
    status, body, pulled = _asgi_post(client.app, [b"x" * 100], [(b"content-length", str(limit + 1).encode())])
    assert (status, pulled) == (413, 0)
    assert body["error"]["status"] == 413


def test_a_real_server_answers_413_before_the_body_ends(live_server):
    """Over a socket, chunked: the server answers while the client is still sending
    (the body never ends here)."""
    limit = 12 * 20_000 + 4096
    sock = socket.create_connection(("127.0.0.1", live_server.port), timeout=30)
    try:
        sock.sendall(
            f"POST /api/{M}/activations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n".encode()
        )
        piece = b"a" * 32768
        for _ in range(limit // len(piece) + 2):
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = sock.recv(65536)
            if not data:
                break
            reply += data
    finally:
        sock.close()
    head = reply.split(b"\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]


# -- client addresses -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "peer,forwarded,expected",
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "1.2.3.4", "203.0.113.5"),  # not a trusted proxy: the header is ignored
        (PROXY, "1.2.3.4", "1.2.3.4"),
        (PROXY, "6.6.6.6, 1.2.3.4", "1.2.3.4"),  # the client may prepend anything: read from the right
        (PROXY, "1.2.3.4, 10.9.8.1", "1.2.3.4"),  # past a second trusted proxy (10.9.8.0/24)
        (PROXY, "1.2.3.4, not-an-ip", PROXY),  # a chain that can't be read: the proxy itself
        (PROXY, None, PROXY),
    ],
)
def test_client_ip(peer, forwarded, expected):
    from actscope.app.limits import client_ip, parse_networks

    headers = [] if forwarded is None else [(b"x-forwarded-for", forwarded.encode())]
    scope = {"type": "http", "client": (peer, 1), "headers": headers}
    assert client_ip(scope, parse_networks(f"{PROXY}, 10.9.8.0/24")) == expected


def test_trusted_proxies_setting_is_checked(web_index):
    from actscope.app.server import settings_from_env

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTSCOPE_INDEX_FILE", str(web_index))
        mp.setenv("ACTSCOPE_TRUSTED_PROXIES", "10.0.0.1, 192.168.0.0/16")
        assert settings_from_env().trusted_proxies == ["10.0.0.1/32", "192.168.0.0/16"]
        mp.setenv("ACTSCOPE_TRUSTED_PROXIES", "10.0.0.1, proxy.local")
        from actscope.indexer.errors import ActscopeError

        with pytest.raises(ActscopeError, match="proxy.local"):
            settings_from_env()


# -- the live budget --------------------------------------------------------------------------
def test_budget_bucket_refills_and_says_when_to_retry():
    from actscope.app.limits import LiveBudget, OverBudget

    now = [0.0]
    budget = LiveBudget(600, clock=lambda: now[0])  # 10 tokens a second
    budget.reserve("a", 590)
    budget.reserve("a", 32)  # admitted while above zero: the level goes to -22
    with pytest.raises(OverBudget) as refused:
        budget.reserve("a", 1)
    assert refused.value.retry_after == math.ceil(22 / 10) == 3
    budget.reserve("b", 1)  # another client is not affected
    now[0] = 2.1  # 21 tokens back: still -1
    with pytest.raises(OverBudget):
        budget.reserve("a", 1)
    budget.refund("a", 2)  # a reservation that used less gives the rest back
    budget.reserve("a", 1)
    now[0] = 1000.0  # refilled, never past the capacity
    budget.reserve("a", 600)
    with pytest.raises(OverBudget):
        budget.reserve("a", 1)


@pytest.fixture(scope="module")
def budget_app(web_index):
    """An app whose clients may run BUDGET model tokens a minute, behind PROXY."""
    with make_client(web_index, live_tokens_per_minute=BUDGET, trusted_proxies=PROXY) as c:
        yield c.app


def _client(app, ip: str):
    from fastapi.testclient import TestClient

    return TestClient(app, client=(ip, 5000))


def test_budget_charges_the_tokens_each_run_ran(budget_app):
    """Runs are admitted until the tokens they ran reach the budget (not a full context
    each, which a run reserves while it runs); then 429 with Retry-After. A text already
    run is answered from the cache and costs nothing; other clients are unaffected."""
    c = _client(budget_app, "198.51.100.1")
    ctx = c.get(f"/api/{M}").json()["ctx"]
    ran: list[int] = []
    start = time.monotonic()
    for i in range(40):
        resp = c.post(f"/api/{M}/activations", json={"text": f"x = {i} + y", "source": S, "index": 0})
        if resp.status_code != 200:
            break
        ran.append(len(resp.json()["token_ids"]))
    refill = (time.monotonic() - start) * BUDGET / 60  # tokens given back while the test ran
    assert resp.status_code == 429
    # Refused once what ran reached the budget; each run admitted while some was left.
    assert sum(ran) >= BUDGET
    assert sum(ran[:-1]) < BUDGET + refill
    assert len(ran) > math.ceil(BUDGET / ctx)  # more runs than full contexts would allow
    retry = int(resp.headers["retry-after"])
    assert 1 <= retry <= math.ceil((sum(ran) - BUDGET) / (BUDGET / 60)) + 1
    assert resp.json()["error"]["status"] == 429 and "tokens per minute" in resp.json()["error"]["message"]
    again = c.post(f"/api/{M}/activations", json={"text": "x = 0 + y", "source": S, "index": 0})
    assert again.status_code == 200 and "retry-after" not in again.headers  # from the cache
    other = _client(budget_app, "198.51.100.2").post(
        f"/api/{M}/activations", json={"text": "x = 0 + z", "source": S, "index": 0}
    )
    assert other.status_code == 200


def test_budget_on_pages_shows_the_error_with_retry_after(budget_app):
    c = _client(budget_app, "198.51.100.3")
    for i in range(40):
        resp = c.get(f"/{M}/try", params={"text": f"page {i} text"})
        if resp.status_code != 200:
            break
    assert resp.status_code == 429 and int(resp.headers["retry-after"]) >= 1
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(resp.text, "html.parser")
    assert "tokens per minute" in soup.select_one(".error-message").get_text()
    assert soup.select_one("textarea[name=text]").get_text().strip() == f"page {i} text"  # kept


def test_forwarded_for_is_believed_only_from_the_trusted_proxy(budget_app):
    """A spent client can't escape by forging X-Forwarded-For; behind the trusted proxy,
    each forwarded address has a budget of its own."""
    spender = _client(budget_app, "198.51.100.4")
    for i in range(40):
        if spender.post(f"/api/{M}/activations", json={"text": f"spend {i}", "source": S}).status_code == 429:
            break
    forged = spender.post(
        f"/api/{M}/activations", json={"text": "forged", "source": S}, headers={"X-Forwarded-For": "1.1.1.1"}
    )
    assert forged.status_code == 429
    proxy = _client(budget_app, PROXY)
    behind = proxy.post(
        f"/api/{M}/activations", json={"text": "forged", "source": S}, headers={"X-Forwarded-For": "1.1.1.1"}
    )
    assert behind.status_code == 200
    # ... and the spent client, through the proxy, is still the spent client.
    via = proxy.post(
        f"/api/{M}/activations",
        json={"text": "via proxy", "source": S},
        headers={"X-Forwarded-For": "198.51.100.4"},
    )
    assert via.status_code == 429


def test_openapi_documents_the_limits(client):
    paths = client.get("/openapi.json").json()["paths"]
    activations = paths["/api/{model}/activations"]["post"]["responses"]
    assert "413" in activations and "429" in activations
    assert "Retry-After" in activations["429"]["headers"]
    for path in ("/api/{model}/try", "/api/{model}/search", "/api/{model}/{source}/{index}"):
        assert "429" in paths[path]["get"]["responses"], path
    assert "429" not in paths["/api/{model}/{source}"]["get"]["responses"]  # no live inference there


def test_serve_turns_uvicorns_forwarded_for_off(web_index, monkeypatch, restored_environ):
    """uvicorn would believe X-Forwarded-For from 127.0.0.1 (its default): a local
    client could then name any address and get a fresh budget. Only the app's
    trusted_proxies setting decides."""
    import os

    import uvicorn
    from click.testing import CliRunner

    from actscope.cli import main

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    for var in ("ROOT_PATH", "INDEX_FILE", "DEVICE", "PRELOAD_LIVE", "LIVE_THREADS", "BLAS_THREADS", "WORKERS"):
        os.environ.pop(f"ACTSCOPE_{var}", None)
    os.environ["ACTSCOPE_LIVE"] = "false"
    result = CliRunner().invoke(main, ["serve", str(web_index)])
    assert result.exit_code == 0, result.output
    assert calls[-1]["proxy_headers"] is False
    assert os.environ["ACTSCOPE_BLAS_THREADS"] == "1"  # serve's default, read by every worker process


def test_the_served_app_runs_numpy_products_on_one_blas_thread(web_index, tmp_path):
    """Requests run side by side in threads; a matrix product that spun up every core in
    each of them oversubscribed the CPU. The app's start-up caps BLAS at blas_threads (in
    a process of its own: the cap holds for the whole process)."""
    import subprocess
    import sys

    script = f"""
import json
from threadpoolctl import threadpool_info
from fastapi.testclient import TestClient
from actscope.app.server import create_app
from actscope.app.settings import Settings

def blas():
    return sorted({{p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}})

import numpy
before = blas()
with TestClient(create_app(Settings(index_file={str(web_index)!r}, live=False, blas_threads=1))) as client:
    assert client.get("/api").status_code == 200
    print(json.dumps({{"before": before, "after": blas()}}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["after"] == [1]
    assert seen["before"] and seen["before"] != [1]  # the library's default here is every core (2)
