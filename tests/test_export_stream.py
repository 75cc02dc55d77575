"""Bulk exports stream: the first bytes of a large source's export arrive before the rest
is produced, and the server's memory stays bounded whatever the source's size.

The large source is written into a copy of the test index with SQL: 8,192 units with 16
examples of 32 activations each (a 4.2M-value export, 90 MB of JSON lines). `actscope serve` runs in a
subprocess whose resident set size is sampled while the export is read."""

from __future__ import annotations

import http.client
import io
import os
import shutil
import socket
import subprocess
import sys
import threading
import time

import duckdb
import orjson
import pytest

pytestmark = pytest.mark.slow

M, BIG = "tiny", "big-res-sae"
N_UNITS, N_EXAMPLES, WINDOW = 8_192, 16, 32
# What the server may add while it exports the large source once more: 10-45 MB here,
# streamed; building the JSON lines whole took 560 MB.
RSS_BOUND_MB = 80
LAST = N_UNITS - 1


@pytest.fixture(scope="module")
def big_index(web_index, tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.duckdb"
    shutil.copyfile(web_index, path)
    con = duckdb.connect(str(path))
    n_seq, ctx = con.execute("SELECT count(*), max(len(token_ids)) FROM sequences").fetchone()
    con.execute(
        "INSERT INTO sources SELECT model, ?, hook_name, kind, layer, ?, spec, band_levels, band_basis "
        "FROM sources WHERE slug = '1-res-sae'",
        [BIG, N_UNITS],
    )
    con.execute(
        "INSERT INTO unit_stats SELECT ?, ?, u, 1 + u % 7, 0, 0.1, 0.2, (u % 100) / 100, 100, u % 100, NULL, "
        "[0.0, 1.0], [50, 50] FROM range(?) t(u)",
        [M, BIG, N_UNITS],
    )
    con.execute(
        "INSERT INTO examples SELECT ?, ?, u, NULL, r, (u + r) % ?, 1 + (u * 7 + r) % (? - 2), 1.0 - r / 100, 0, "
        "list_transform(range(?), lambda i: (u * i % 97) / 97.0) FROM range(?) a(u), range(?) b(r) ORDER BY u, r",
        [M, BIG, n_seq, ctx, WINDOW, N_UNITS, N_EXAMPLES],
    )
    con.execute(
        "INSERT INTO logits SELECT ?, ?, u, [1, 2, 3], [0.3, 0.2, 0.1], [4, 5, 6], [-0.1, -0.2, -0.3] FROM range(?) t(u)",
        [M, BIG, N_UNITS],
    )
    con.close()
    return path


@pytest.fixture(scope="module")
def server(big_index):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", ACTSCOPE_ROOT_PATH="")
    cmd = [sys.executable, "-c", "from actscope.cli import main; main()", "serve", str(big_index), "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, cwd=str(big_index.parent), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/api")
                assert conn.getresponse().status == 200
                conn.close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(proc.stderr.read().decode()[-2000:]) from None
                time.sleep(0.2)
        yield proc, port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


class Sampler:
    """The peak RSS of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int):
        self.pid, self.peak, self.stop = pid, rss_mb(pid), threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.02)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()


def export(port: int, fmt: str) -> tuple[float, bytes, float]:
    """(seconds to the first body bytes, the body, seconds to the whole body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    t0 = time.perf_counter()
    conn.request("GET", f"/api/{M}/{BIG}/export.{fmt}")
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-length") is None  # streamed: its size is not known up front
    first = resp.read1(65536)
    t_first = time.perf_counter() - t0
    rest = resp.read()
    t_all = time.perf_counter() - t0
    conn.close()
    return t_first, first + rest, t_all


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_streams_with_bounded_memory(server, big_index, fmt):
    proc, port = server
    warm = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    warm.request("GET", f"/api/{M}/{BIG}/export.{fmt}")  # code paths and the database's block cache
    warm.getresponse().read()
    warm.close()
    base = rss_mb(proc.pid)
    with Sampler(proc.pid) as rss:
        t_first, body, t_all = export(port, fmt)
    grew = rss.peak - base
    assert t_first < 3.0 and t_first < t_all / 4, (t_first, t_all)  # first bytes long before the end
    assert grew < RSS_BOUND_MB, f"the server grew by {grew:.0f} MB while exporting"
    # The whole export, exactly the units and examples of the file.
    if fmt == "jsonl":
        rows = [orjson.loads(line) for line in body.splitlines()]
    else:
        import pyarrow.parquet as pq

        rows = pq.read_table(io.BytesIO(body), columns=["unit", "examples", "top_ids", "cos_in_out"]).to_pylist()
    assert [r["unit"] for r in rows] == list(range(N_UNITS))
    assert all(len(r["examples"]) == N_EXAMPLES for r in rows)
    assert rows[5]["top_ids"] == [1, 2, 3] and rows[5]["cos_in_out"] is None
    con = duckdb.connect(str(big_index), read_only=True)
    acts = con.execute("SELECT acts FROM examples WHERE source = ? AND unit = ? AND rank = 3", [BIG, LAST]).fetchone()[
        0
    ]
    con.close()
    assert rows[LAST]["examples"][3]["acts"] == pytest.approx(acts)
