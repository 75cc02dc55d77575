"""Fixtures for the web app tests (owned by the web explorer work).

TEMPORARY: `web_index` builds a small, internally consistent index with the real schema
until the lead's `tiny_index` fixture (a real `actscope index` run) lands.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

XSS_TOKEN = "<script>alert(1)</script>"


def build_fake_index(path) -> None:
    import duckdb

    from indexer.schema import create_all, create_indexes

    rng = np.random.default_rng(0)
    vocab = ["<|BOS|>", XSS_TOKEN, " the", " cat", " sat", " on", " mat", "&amp;", "\"q\""] + [
        f" w{i}" for i in range(55)
    ]
    n_seq, ctx = 12, 16
    seqs = rng.integers(1, len(vocab), size=(n_seq, ctx))
    seqs[:, 0] = 0
    con = duckdb.connect(str(path))
    create_all(con)
    con.execute("INSERT INTO meta VALUES ('corpus', ?)", [json.dumps({"name": "fake", "n_docs": 3})])
    con.execute(
        "INSERT INTO models VALUES ('tiny', ?, '{}', 2, 16, ?, 32, ?, 0, 0, ?, ?)",
        [json.dumps({"kind": "native", "name": "/nowhere", "slug": "tiny"}), len(vocab), ctx,
         n_seq, n_seq * (ctx - 1)],
    )
    con.executemany("INSERT INTO vocab VALUES ('tiny', ?, ?)", list(enumerate(vocab)))
    con.executemany("INSERT INTO sequences VALUES ('tiny', ?, ?)",
                    [(i, [int(t) for t in seqs[i]]) for i in range(n_seq)])
    for slug, kind, layer, n_units in [("0-mlp", "neuron", 0, 6), ("1-res-sae", "sae", 1, 5)]:
        hook = f"blocks.{layer}.mlp.hook_post" if kind == "neuron" else f"blocks.{layer}.hook_resid_post"
        con.execute("INSERT INTO sources VALUES ('tiny', ?, ?, ?, ?, ?, '{}', [0.0, 0.5, 0.9, 1.0], ?)",
                    [slug, hook, kind, layer, n_units, "all" if kind == "neuron" else "firing"])
        acts = rng.normal(size=(n_seq, ctx, n_units)).astype(np.float32)
        if kind == "sae":
            acts = np.maximum(acts, 0)
        acts[:, 0, :] = 0
        for u in range(n_units):
            a = acts[:, 1:, u]
            flat = a.ravel()
            counts, edges = np.histogram(flat, bins=10)
            con.execute(
                "INSERT INTO unit_stats VALUES ('tiny', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [slug, u, float(flat.max()), float(flat.min()), float(flat.mean()), float(flat.std()),
                 float((flat > 0).mean()), flat.size, int((flat > 0).sum()),
                 0.1 * u if kind == "neuron" else None, edges.tolist(), counts.tolist()],
            )
            order = np.argsort(-flat)[:5]
            rows = []
            for rank, idx in enumerate(order):
                seq, p = divmod(int(idx), ctx - 1)
                pos = p + 1
                start = max(0, pos - 4)
                end = min(ctx, pos + 2)
                rows.append((slug, u, None, rank, seq, pos, float(acts[seq, pos, u]), start,
                             [float(x) for x in acts[seq, start:end, u]]))
            qs = np.quantile(flat, [0.0, 0.5, 0.9, 1.0])
            for b in range(3):
                lo, hi = float(qs[b]), float(qs[b + 1])
                inside = (flat >= lo) & ((flat < hi) if b < 2 else (flat <= hi))
                con.execute("INSERT INTO bands VALUES ('tiny', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [slug, u, b, [0.0, 0.5, 0.9][b], [0.5, 0.9, 1.0][b], lo, hi,
                             int(inside.sum()), float(inside.mean())])
                for rank, idx in enumerate(np.flatnonzero(inside)[:3]):
                    seq, p = divmod(int(idx), ctx - 1)
                    pos = p + 1
                    start = max(0, pos - 4)
                    end = min(ctx, pos + 2)
                    rows.append((slug, u, b, rank, seq, pos, float(acts[seq, pos, u]), start,
                                 [float(x) for x in acts[seq, start:end, u]]))
            con.executemany("INSERT INTO examples VALUES ('tiny', ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            con.execute("INSERT INTO logits VALUES ('tiny', ?, ?, ?, ?, ?, ?)",
                        [slug, u, [2, 3, 4], [1.5, 1.0, 0.5], [5, 6, 1], [-1.5, -1.0, -0.5]])
    create_indexes(con)
    con.close()


@pytest.fixture(scope="session")
def web_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("webindex") / "fake.duckdb"
    build_fake_index(path)
    return path


# -- app, server and browser ---------------------------------------------------------
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]


def make_client(index_path, **settings):
    from fastapi.testclient import TestClient

    from app.server import create_app
    from app.settings import Settings

    app = create_app(Settings(index_file=index_path, **settings))
    return TestClient(app)


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
        "WHERE e.source = ? AND e.unit = 0 AND e.band IS NULL ORDER BY e.rank LIMIT 1", [source]
    ).fetchone()[0]
    con.execute("UPDATE vocab SET token = ? WHERE token_id = ?", [XSS_TOKEN, tok])
    con.close()
    return path, source, 0


class ServerThread:
    """uvicorn serving an app on 127.0.0.1:<free port> in a thread of the test process."""

    def __init__(self, app):
        import socket
        import threading

        import uvicorn

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
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
    from app.server import create_app
    from app.settings import Settings

    app = create_app(Settings(index_file=web_index, preload_live=True))
    with ServerThread(app) as server:
        yield server


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
