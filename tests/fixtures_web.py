"""Fixtures for the web app tests (owned by the web explorer work).

The app is tested over `tiny_index` (tests/fixtures_models.py): a real index built by the
real indexer from a tiny random model, so live activations can be checked too.
"""

from __future__ import annotations

import pytest

XSS_TOKEN = "<script>alert(1)</script>"


@pytest.fixture(scope="session")
def web_index(tiny_index):
    return tiny_index


# -- app, server and browser ---------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def make_client(index_path, **settings):
    from fastapi.testclient import TestClient

    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    settings.setdefault("root_path", "")  # at the root whatever ACTSCOPE_ROOT_PATH says
    app = create_app(Settings(index_file=index_path, **settings))
    return TestClient(app)


@pytest.fixture(scope="module")
def db(web_index):
    """A read-only connection to the test index's DuckDB file, for reference queries."""
    import duckdb

    con = duckdb.connect(str(web_index), read_only=True)
    yield con
    con.close()


@pytest.fixture
def restored_environ():
    """`actscope serve` writes ACTSCOPE_* variables into os.environ for its worker
    processes; a test that runs it must not leave them to the apps built after it."""
    import os

    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(scope="session")
def client(web_index):
    """An in-process client over the test index (live inference on, loaded lazily)."""
    with make_client(web_index) as c:
        yield c


@pytest.fixture
def xss_index(web_index, tmp_path):
    """A copy of the test index where the focus token of 0-mlp/0's top example reads
    `<script>alert(1)</script>`. Returns (path, source, unit)."""
    import shutil

    import duckdb

    path = tmp_path / "xss.duckdb"
    shutil.copyfile(web_index, path)
    con = duckdb.connect(str(path))
    source = con.execute("SELECT slug FROM sources ORDER BY layer, kind, slug LIMIT 1").fetchone()[0]
    tok = con.execute(
        "SELECT s.token_ids[e.pos + 1] FROM examples e JOIN sequences s USING (model, seq) "
        "WHERE e.source = ? AND e.unit = 0 AND e.band IS NULL ORDER BY e.rank LIMIT 1",
        [source],
    ).fetchone()[0]
    con.execute("UPDATE vocab SET token = ?, token_bytes = ? WHERE token_id = ?", [XSS_TOKEN, XSS_TOKEN.encode(), tok])
    con.close()
    return path, source, 0


class ServerThread:
    """uvicorn serving an app on 127.0.0.1:<free port> in a thread of the test process.

    With `root_path`, uvicorn serves the app under that prefix as `actscope serve
    --root-path` does: requests arrive without it (a reverse proxy strips it), the app
    puts it in every URL it emits."""

    def __init__(self, app, root_path: str = ""):
        import socket
        import threading

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", root_path=root_path)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        import time

        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def live_server(web_index):
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=web_index, preload_live=True, root_path=""))
    with ServerThread(app) as server:
        yield server


PREFIX = "/actscope"


class HandlerThread:
    """An http.server handler class served on 127.0.0.1:<free port> in a thread of the
    test process, for as long as the `with` block lasts."""

    def __init__(self, handler) -> None:
        from http.server import ThreadingHTTPServer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        import threading

        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


class StripPrefixProxy(HandlerThread):
    """A reverse proxy on 127.0.0.1:<free port> in a thread of the test process, as a
    user puts in front of `actscope serve --root-path PREFIX` (nginx:
    `location /actscope/ { proxy_pass http://127.0.0.1:8000/; }`): it forwards
    PREFIX/... to the upstream server without the prefix; any other path is 404."""

    def __init__(self, upstream_port: int, prefix: str = PREFIX):
        import http.client
        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            def forward(self) -> None:
                if not (self.path == prefix or self.path.startswith(prefix + "/")):
                    self.send_error(404, "not under the proxied prefix")
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                skip = ("host", "connection", "keep-alive")
                headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
                upstream = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                try:
                    upstream.request(self.command, self.path[len(prefix) :] or "/", body=body, headers=headers)
                    resp = upstream.getresponse()
                    data = resp.read()
                finally:
                    upstream.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("connection", "content-length", "transfer-encoding", "date", "server"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = forward

            def log_message(self, format, *args):  # quiet
                pass

        super().__init__(Handler)


@pytest.fixture(scope="session")
def prefixed_site(web_index):
    """The app served as `actscope serve --root-path /actscope` does (uvicorn with a
    root_path), behind a proxy that strips the prefix. Yields the proxy: the site is at
    `proxy.url + PREFIX + "/"`."""
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=web_index, preload_live=True, root_path=""))  # uvicorn's root_path
    with ServerThread(app, root_path=PREFIX) as server, StripPrefixProxy(server.port) as proxy:
        yield proxy


@pytest.fixture(scope="session")
def browser():
    import os

    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (tests/ensure_chromium.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _title_parts(el) -> tuple[str, int]:
    """(label, id) from a rendered token's title `"<label>" (id N)[ in "<chars>"]: <act>`."""
    import json
    import re

    label, end = json.JSONDecoder().raw_decode(el["title"])
    found = re.match(r" \(id (-?\d+)\)", el["title"][end:])
    assert found, el["title"]
    return label, int(found.group(1))


@pytest.fixture
def page(browser):
    """A fresh browser page at desktop width; uncaught page errors are kept in page.errors."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(20_000)
    pg.errors = []
    pg.on("pageerror", lambda exc: pg.errors.append(str(exc)))
    yield pg
    context.close()


def token_of(el) -> str:
    """The token as shown by a rendered token, from its title (`"<token>" (id N): <act>`):
    its text, or its bytes as `<0xNN>` where they are no character.

    (html.parser collapses whitespace-only text nodes, so get_text() is not exact.)
    """
    return _title_parts(el)[0]


def token_id_of(el) -> int:
    """The token id in a rendered token's title."""
    return _title_parts(el)[1]


@pytest.fixture(scope="session")
def solu_served_index(tmp_path_factory, tiny_solu_index, tiny_index):
    """One file serving two models: the SoLU index ('solu-tiny', first, so live inference
    runs it) with every table of the tiny index ('tiny') copied in."""
    import shutil

    import duckdb

    from actscope.indexer.store.schema import TABLES

    path = tmp_path_factory.mktemp("served") / "solu-and-tiny.duckdb"
    shutil.copyfile(tiny_solu_index, path)
    con = duckdb.connect(str(path))
    try:
        con.execute(f"ATTACH '{tiny_index}' AS other (READ_ONLY)")
        for table in TABLES:
            if table != "meta":
                con.execute(f"INSERT INTO {table} SELECT * FROM other.{table}")
        con.execute("DETACH other")
    finally:
        con.close()
    return path
