"""Faults of the server: damaged index files, a live model that cannot load, and an
index rebuilt in place while it is served."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from actscope.indexer.store.schema import SCHEMA_VERSION
from fixtures_web import make_client

M = "tiny"
TEXT = "def wrap(text, width):"


# -- a live model that cannot load --------------------------------------------------
def _break_weights(model_dir: Path, how: str) -> None:
    weights = model_dir / "model.safetensors"
    if how == "garbage":
        weights.write_bytes(b"\x07" * 8 + b"these are not weights" * 50)
    elif how == "cut in half":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:  # valid safetensors, of another model's shapes
        import torch
        from safetensors.torch import save_file

        save_file({"embed.W_E": torch.zeros(3, 5), "blocks.0.mlp.W_in": torch.zeros(2, 2)}, str(weights))


@pytest.mark.parametrize("how", ["garbage", "cut in half", "other shapes"])
def test_live_model_that_fails_to_load_leaves_pages_up_and_live_routes_503(tmp_path, web_index, tiny_model_dir, how):
    model = tmp_path / "tiny"
    shutil.copytree(tiny_model_dir, model)
    _break_weights(model, how)
    index = tmp_path / "index.duckdb"
    shutil.copyfile(web_index, index)
    con = duckdb.connect(str(index))
    spec = json.loads(con.execute("SELECT spec FROM models").fetchone()[0])
    con.execute("UPDATE models SET spec = ?", [json.dumps({**spec, "name": str(model)})])
    con.close()

    with make_client(index) as client:
        for path in (f"/{M}/0-mlp/3", f"/api/{M}/0-mlp/3", f"/{M}/1-res-sae", f"/api/{M}/search?token=def"):
            assert client.get(path).status_code == 200, path
        for attempt in range(2):  # the failure is kept: the second request gets the same answer
            r = client.post(f"/api/{M}/activations", json={"text": TEXT, "source": "0-mlp", "index": 3})
            assert r.status_code == 503, r.text
            message = r.json()["error"]["message"]
            assert r.json()["error"]["status"] == 503
            assert message.startswith("Live inference is unavailable: ") and str(model) in message, message
            assert "Traceback" not in message and len(message) < 400
        r = client.get(f"/api/{M}/try", params={"text": TEXT})
        assert r.status_code == 503 and r.json()["error"]["message"] == message
        page = client.get(f"/{M}/0-mlp/3", params={"text": TEXT})
        assert page.status_code == 503 and "Live inference is unavailable" in page.text
        assert "<h1" in page.text  # the unit page itself, with the error shown on it
        assert client.app.state.catalog.live(M).loaded is False


# -- damaged index files --------------------------------------------------------------
def _free_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return port


def _serve(path: Path, *extra: str, env: dict | None = None) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from actscope.cli import main; main()",
        "serve",
        str(path),
        "--port",
        str(_free_port()),
        *extra,
    ]


def _block_of(path: Path, table: str) -> int:
    """The file offset of a block that holds `table`'s data (DuckDB: a 12 KiB header, then
    blocks of 256 KiB)."""
    con = duckdb.connect(str(path), read_only=True)
    try:
        block = con.execute(f"SELECT min(block_id) FROM pragma_storage_info('{table}') WHERE block_id >= 0").fetchone()[
            0
        ]
        size = con.execute("SELECT block_size FROM pragma_database_size()").fetchone()[0]
    finally:
        con.close()
    return 3 * 4096 + block * size


def _damaged(tmp_path: Path, web_index: Path, how: str) -> Path:
    data = web_index.read_bytes()
    path = tmp_path / f"{how.replace(' ', '-')}.duckdb"
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "corrupted block":  # the logits: no page reads them when the server starts
        at = _block_of(web_index, "logits") + 1000
        path.write_bytes(data[:at] + bytes(b ^ 0x5A for b in data[at : at + 256]) + data[at + 256 :])
    else:
        shutil.copyfile(web_index, path)
        con = duckdb.connect(str(path))
        con.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
        con.close()
    return path


@pytest.mark.slow
def test_serve_stops_with_one_error_line_on_a_damaged_or_newer_file(tmp_path, web_index):
    expected = {
        "truncated": "the index file is damaged or truncated (",
        "corrupted block": "the index file is damaged or truncated (",
        "newer schema": (
            f"index schema version {SCHEMA_VERSION + 1}, this actscope reads version {SCHEMA_VERSION}; "
            "rebuild it with `actscope index` (or upgrade actscope: a newer version wrote it)"
        ),
    }
    procs = {}
    for how in expected:
        path = _damaged(tmp_path, Path(web_index), how)
        procs[how] = (
            path,
            # Outside the checkout, whose actscope/ folder would shadow the installed package.
            subprocess.Popen(_serve(path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path),
        )
    for how, (path, proc) in procs.items():
        try:
            out, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 2, (how, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1, (how, err)
        assert lines[0].startswith(f"error: {path}: {expected[how]}"), (how, lines[0])
        assert "serving" not in out


# -- an index rebuilt in place while it is served ---------------------------------------
class Hammer:
    """Threads that GET `paths` over and over (keep-alive connections) until stopped,
    recording (time, path, status, body) of every answer, and every failure to get one."""

    def __init__(self, port: int, paths: list[str], threads: int = 3):
        import threading

        self.port, self.paths = port, paths
        self.answers: list[tuple[float, str, int, bytes]] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def _run(self, offset: int) -> None:
        import http.client
        import time

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        i = offset
        while not self._stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                self.answers.append((time.monotonic(), path, resp.status, resp.read()))
            except Exception as exc:  # a refused or dropped connection is a failed request too
                self.failures.append(f"{path}: {type(exc).__name__}: {exc}")
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.close()

    def __enter__(self):
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def last(self, path: str) -> bytes:
        return next(body for _, p, _, body in reversed(self.answers) if p == path)

    def wait_for(self, path: str, body: bytes, timeout: float = 90) -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(p == path and b == body for _, p, _, b in self.answers[-12:]):
                return
            time.sleep(0.1)
        raise AssertionError(f"{path} did not come to answer from the new index")


class Server:
    """`actscope serve` in a process of its own, stopped with SIGTERM."""

    def __init__(self, path: Path, *extra: str, env: dict[str, str]):
        import os

        cmd = _serve(path, *extra)
        self.port = int(cmd[cmd.index("--port") + 1])
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "ACTSCOPE_LIVE": "false", "ACTSCOPE_ROOT_PATH": "", **env},
            cwd=path.parent,
        )

    def __enter__(self):
        import http.client
        import time

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.communicate()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", f"/api/{M}")
                if conn.getresponse().status == 200:
                    return self
            except OSError:
                time.sleep(0.2)
        raise AssertionError("actscope serve did not start")

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.out, self.err = self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.out, self.err = self.proc.communicate()


# One unit page and its JSON twin whose examples differ between the two indexes (the
# standard and the TopK SAE), and the model's page, alike in both.
SWAP_PATHS = [f"/api/{M}/1-res-sae/0", f"/{M}/1-res-sae/0", f"/api/{M}"]


def _body(client, path: str) -> bytes:
    r = client.get(path)
    assert r.status_code == 200
    return r.content


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory, web_index, tiny_topk_index):
    """({path: body} of the old index, of the new one) as an in-process app serves them,
    each under the served file's name (the model's JSON names its file)."""
    bodies = []
    for index in (web_index, tiny_topk_index):
        named = tmp_path_factory.mktemp("named") / "served.duckdb"
        shutil.copyfile(index, named)
        with make_client(named, live=False) as client:
            bodies.append({path: _body(client, path) for path in SWAP_PATHS})
    old, new = bodies
    assert old[SWAP_PATHS[0]] != new[SWAP_PATHS[0]] and old[SWAP_PATHS[1]] != new[SWAP_PATHS[1]]
    return old, new


def _assert_every_answer_old_or_new(hammer: Hammer, old: dict, new: dict) -> None:
    assert hammer.failures == [], hammer.failures[:5]
    assert all(status == 200 for _, _, status, _ in hammer.answers)
    # Each answer is the old index's or the new one's, whole; once the new one answered
    # (in a process), that process never answered from the old again.
    for _, path, _, body in hammer.answers:
        assert body in (old[path], new[path]), path


@pytest.mark.slow
def test_rebuilt_in_place_and_served_on_change_by_every_worker(
    tmp_path, web_index, tiny_model_dir, tiny_topk_sae_dir, tiny_corpus_dir, two_indexes
):
    """Two worker processes with --reload-on-change: while `actscope index` rebuilds the
    file they serve, they answer from the old file; then each picks up the new one, and
    no request fails in between."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index
    from fixtures_models import TINY_INDEX_OPTIONS

    old, new = two_indexes
    served = tmp_path / "served.duckdb"
    shutil.copyfile(web_index, served)
    env = {"ACTSCOPE_WORKERS": "2", "ACTSCOPE_RELOAD_INTERVAL_S": "0.2"}
    with Server(served, "--reload-on-change", env=env) as server, Hammer(server.port, SWAP_PATHS) as hammer:
        run_index(
            IndexConfig(
                model=str(tiny_model_dir),
                dataset=str(tiny_corpus_dir),
                out=str(served),
                saes=[str(tiny_topk_sae_dir)],
                **TINY_INDEX_OPTIONS,
            )
        )
        rebuilt = len(hammer.answers)
        hammer.wait_for(SWAP_PATHS[0], new[SWAP_PATHS[0]])
        import time

        # One worker answered from the new file; the other may still be a poll behind.
        time.sleep(2)  # both workers have polled the file ten times since
        n = len(hammer.answers)
        time.sleep(1)
        later = hammer.answers[n:]
    assert rebuilt > 20 and all(body == old[path] for _, path, _, body in hammer.answers[:rebuilt])
    _assert_every_answer_old_or_new(hammer, old, new)
    assert len(later) > 20 and all(body == new[path] for _, path, _, body in later)
    assert server.proc.returncode == 0, server.err


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_replaced_file_is_served_after_sighup_only(tmp_path, web_index, tiny_topk_index, two_indexes, workers):
    """No --reload-on-change: the file renamed over the served one is not read until
    SIGHUP; then the new one answers, with no failed request in between. With two
    worker processes the supervisor passes SIGHUP on, and each reloads."""
    import os
    import signal
    import time

    old, new = two_indexes
    served = tmp_path / "served.duckdb"
    shutil.copyfile(web_index, served)
    with Server(served, env={"ACTSCOPE_WORKERS": str(workers)}) as server, Hammer(server.port, SWAP_PATHS) as hammer:
        if workers > 1:
            _wait_listening(server, workers)
        shutil.copyfile(tiny_topk_index, tmp_path / "served.duckdb.tmp")
        os.replace(tmp_path / "served.duckdb.tmp", served)  # as the indexer does
        time.sleep(1.5)
        before_signal = len(hammer.answers)
        server.proc.send_signal(signal.SIGHUP)
        hammer.wait_for(SWAP_PATHS[0], new[SWAP_PATHS[0]])
        n = len(hammer.answers)
        time.sleep(1)
        later = hammer.answers[n:]
    assert before_signal > 20 and all(body == old[path] for _, path, _, body in hammer.answers[:before_signal])
    _assert_every_answer_old_or_new(hammer, old, new)
    assert len(later) > 10 and all(body == new[path] for _, path, _, body in later)
    assert server.proc.returncode in (0, -signal.SIGTERM), server.err  # uvicorn re-raises the SIGTERM it handled
    assert server.err.count("SIGHUP received: now serving the index at") == workers, server.err


# -- several worker processes ------------------------------------------------------------
def _children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _sockets_on(pid: int, port: int, state: str) -> int:
    """How many TCP sockets of process `pid` are on local `port` in `state` (the
    /proc/net/tcp code: 0A listening, 01 established)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = fd.readlink().as_posix()
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == state and fields[9] in inodes:
            n += 1
    return n


def _wait_listening(server: Server, workers: int) -> list[int]:
    """The worker processes' pids, once `workers` of them listen on the server's port."""
    import time

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        listening = [c for c in _children(server.proc.pid) if _sockets_on(c, server.port, "0A")]
        if len(listening) == workers:
            return listening
        time.sleep(0.2)
    raise AssertionError(f"{workers} worker processes did not come to listen")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_workers_share_a_burst_of_connections(web_index):
    """ACTSCOPE_WORKERS=2: each worker listens on its own socket, so 16 keep-alive
    connections opened at once are spread over both (uvicorn's shared socket gave all
    16 to one worker in most bursts: the worker that woke first accepted them all)."""
    import http.client

    with Server(web_index, env={"ACTSCOPE_WORKERS": "2"}) as server:
        workers = _wait_listening(server, 2)
        for _burst in range(3):
            conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=30) for _ in range(16)]
            for conn in conns:
                conn.connect()
            for conn in conns:
                conn.request("GET", f"/api/{M}")
            assert all(conn.getresponse().read() for conn in conns)
            held = [_sockets_on(w, server.port, "01") for w in workers]
            for conn in conns:
                conn.close()
            # Hashed over two sockets, all 16 on one: once in 2**15 bursts.
            assert sum(held) == 16 and min(held) >= 1, held
    assert server.proc.returncode == 0, server.err
    assert not any(Path(f"/proc/{w}").exists() for w in workers)


def test_workers_setting_is_checked():
    from actscope.app.server import worker_count
    from actscope.indexer.errors import ActscopeError

    assert worker_count(None) == 1 and worker_count("") == 1 and worker_count(" 3 ") == 3
    import os

    assert worker_count("auto") == len(os.sched_getaffinity(0)) == worker_count("AUTO")
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ActscopeError, match="ACTSCOPE_WORKERS must be a whole number from 1 or 'auto'"):
            worker_count(bad)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is Linux's")
def test_a_worker_that_dies_is_started_again(web_index):
    """ACTSCOPE_WORKERS=2: a worker killed while serving is replaced, and the server goes
    on answering; it still stops cleanly."""
    import http.client
    import os
    import signal
    import time

    with Server(web_index, env={"ACTSCOPE_WORKERS": "2"}) as server:
        first = _wait_listening(server, 2)
        os.kill(first[0], signal.SIGKILL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            now = [c for c in _children(server.proc.pid) if _sockets_on(c, server.port, "0A")]
            if len(now) == 2 and first[0] not in now:
                break
            time.sleep(0.2)
        assert len(now) == 2 and first[0] not in now and first[1] in now, (first, now)
        for _ in range(8):
            conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
            conn.request("GET", f"/api/{M}")
            assert conn.getresponse().status == 200
            conn.close()
    assert server.proc.returncode == 0, server.err
    assert f"worker {first[0]} ended (exit code -9); starting another" in server.err
    assert not any(Path(f"/proc/{w}").exists() for w in now)
