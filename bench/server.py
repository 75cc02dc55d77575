"""Load test of `actscope serve`: p50/p99 latency and requests/s under concurrent clients.

Starts `actscope serve INDEX` in a subprocess on 127.0.0.1, warms it up (the live model
loads, each source's table is built) and waits until it is idle, then runs each scenario
with N concurrent keep-alive clients (asyncio on uvloop, raw HTTP/1.1, in this process) for a fixed
number of requests:

  unit JSON   GET  /api/{model}/{source}/{index}     random units of every source
  unit HTML   GET  /{model}/{source}/{index}         random units of every source
  live        POST /api/{model}/activations          a fresh 128-token text each time
                                                     (no cache hits), one unit
  table       GET  /{model}/{source}?sort=COL...     the largest source's table page,
                                                     every row (dead units shown),
                                                     sorted by each of its columns,
                                                     random order and page
  search      GET  /api/{model}/search?token=...     top tokens of that source's units
  regex       GET  /api/{model}/{source}/{index}/hypothesis?regex=...&seed=I
                                                     a regex hypothesis over 256 sequences,
                                                     run live; a new unit and seed each time
                                                     (nothing cached), one client
  export      GET  /api/{model}/{source}/export.FMT  time to the first byte, one client
  similar     GET  /api/{model}/{source}/{index}/similar?scope=all&k=20
                                                     random units of every source (fingerprint
                                                     correlations over all sources), one client
                                                     and N clients
  explain     GET  /api/{model}/{source}/{index}/explain?seq=S&pos=P
                                                     a top example of a random unit of
                                                     every source, one client (no two
                                                     alike: no cache hits)

With --big-index PATH it runs again on an index of 102,400 units (12 layers x 3,072
neurons of a random model and a 65,536-feature TopK SAE, 4,096 tokens), built at PATH
by bench/big_index.py the first time (about 3 minutes) and reused after that. Live
inference is measured on the first index only.

With --million PATH it runs on an index of 1,048,576 units (16 sources of 65,536
neurons, synthetic activations: see bench/million_index.py, which builds it at PATH the
first time), without live inference, once per --resident-mb budget. It reports the
time `actscope serve` takes to answer its first request, the time until every source it
was asked for is in memory (or found not to fit), and the server's resident set size
(now and peak) beside the bytes the store says it holds.

Usage:
  .venv/bin/python bench/server.py [--index demo.duckdb] [--big-index big.duckdb] [--clients 16] [--units-only]
      [--only-similar] [--workers auto]
  .venv/bin/python bench/server.py --million million.duckdb --resident-mb 4096,1024

The server runs with ACTSCOPE_WORKERS=auto by default (one process per core, as
docs/cli.md advises for a machine that serves), --workers 1 for a single process.

Without --index, the demo index is built (or reused) at demo.duckdb via `actscope demo`'s
builder. The load generator shares the 2 cores with the server, so the numbers are
pessimistic; they are printed, never asserted (the exit status says whether every
target was met).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

from actscope.app.server import worker_count

TARGETS_MS = {"unit JSON": 10.0, "unit HTML": 20.0, "live 128 tokens": 60.0}  # cached passes too
TABLE_MS = 50.0  # a source table page, sorted by any column
SEARCH_MS = 50.0  # token search
SIMILAR_MS = 50.0  # a unit's 20 neighbours over every source
EXPORT_FIRST_BYTE_MS = 1000.0
REGEX_MS = 4000.0  # a regex hypothesis over 256 sequences (issue 18)
REGEXES = [r"\bdef\b", r"\bthe\b", r"[.,;:]", r"\n", r"[A-Z]{2,}", r"\bself\b", r"\(", r"\b(if|for|while)\b"]
EXPLAIN_MS = 300.0  # what mattered at one example + its minimal example, on the bundled model
WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "as",
    "with",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "from",
    "at",
    "or",
    "an",
    "which",
    "return",
    "value",
    "def",
    "class",
    "import",
    "self",
    "if",
    "else",
    "while",
    "for",
    "print",
    "list",
    "dict",
    "none",
    "true",
    "false",
    "king",
    "lord",
    "thou",
    "thee",
    "hath",
    "love",
    "night",
    "day",
    "sword",
    "crown",
    "heaven",
    "death",
]


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get_json(url: str, data: dict | None = None, timeout: float = 120) -> dict:
    req = urllib.request.Request(
        url, data=None if data is None else json.dumps(data).encode(), headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


class Conn:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader = self.writer = None

    async def open(self):
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self.writer.write((head + "\r\n").encode() + (body or b""))
        # The whole head in one read, parsed with bytes methods: the load generator shares
        # the cores with the server, so its own work per response is kept small.
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        lines = raw.lower().split(b"\r\n")
        length, chunked = 0, False
        for line in lines[1:]:
            if line.startswith(b"content-length:"):
                length = int(line[15:])
            elif line.startswith(b"transfer-encoding:") and b"chunked" in line:
                chunked = True
        if chunked:
            parts = []
            while True:
                size = int((await self.reader.readline()).strip(), 16)
                if size == 0:
                    await self.reader.readline()
                    break
                parts.append(await self.reader.readexactly(size))
                await self.reader.readline()
            return status, b"".join(parts)
        return status, await self.reader.readexactly(length)

    def close(self):
        if self.writer:
            self.writer.close()


async def run_scenario(port: int, make_request, n_requests: int, clients: int):
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(n_requests))

    async def client(cid: int):
        conn = Conn("127.0.0.1", port)
        await conn.open()
        for i in counter:
            method, path, body = make_request(i)
            t0 = time.perf_counter()
            try:
                status, data = await conn.request(method, path, body)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                errors.append(repr(exc))
                conn.close()
                conn = Conn("127.0.0.1", port)
                await conn.open()
                continue
            latencies.append(time.perf_counter() - t0)
            if status != 200:
                errors.append(f"{status} {path}: {data[:120]!r}")
        conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    wall = time.perf_counter() - t0
    return latencies, errors, wall


def run_loop(coro):
    """asyncio.run on uvloop (installed with uvicorn[standard]): the load generator
    shares the cores with the server, so its own CPU per request is kept small."""
    import uvloop

    return uvloop.run(coro)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def long_text(rng: random.Random, n_words: int = 220) -> str:
    return f"{rng.randrange(10**9)} " + " ".join(rng.choice(WORDS) for _ in range(n_words))


def start_server(index: str, **settings: str) -> tuple[subprocess.Popen, int, dict]:
    """`actscope serve INDEX` on a free port, with ACTSCOPE_{NAME} = value for each of
    `settings`; (process, port, the /api home)."""
    port = free_port()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        WANDB_MODE="disabled",
        TOKENIZERS_PARALLELISM="false",
        # Every client here is one address: the per-client live budget would measure itself.
        ACTSCOPE_LIVE_TOKENS_PER_MINUTE="0",
        **{f"ACTSCOPE_{name.upper()}": value for name, value in settings.items()},
    )
    cmd = [sys.executable, "-c", "from actscope.cli import main; main()", "serve", index, "--port", str(port)]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while True:
        try:
            return server, port, get_json(f"http://127.0.0.1:{port}/api", timeout=5)
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                print(server.stderr.read().decode()[-2000:], file=sys.stderr)
                stop_server(server)
                raise SystemExit("server did not start") from None
            time.sleep(0.2)


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        server.kill()


def report(port: int, scenarios, clients: int) -> bool:
    """Run each (name, make_request, n, target ms) with `clients` clients; print a row each."""
    ok = True
    for name, make, n, target in scenarios:
        lat, errors, wall = run_loop(run_scenario(port, make, n, clients))
        p50, p99 = pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000
        good = p50 <= target and not errors
        ok &= good
        print(
            f"{name:<34}{len(lat):>9}{len(errors):>8}{p50:>9.1f}{p99:>9.1f}{len(lat) / wall:>9.0f}"
            f"  <= {target:.0f} ms {'ok' if good else 'MISSED'}",
            flush=True,
        )
        for e in errors[:3]:
            print("   error:", e)
    return ok


def header(index: str, model: dict, clients: int, extra: str = "", workers: str = "1") -> None:
    sources = model["sources"]
    n_units = sum(s["n_units"] for s in sources)
    print(
        f"\nindex {index}: model {model['model']}, {len(sources)} sources, {n_units:,} units, "
        f"{model['n_tokens']:,} tokens{extra}"
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{clients} concurrent clients on loopback, {worker_count(workers)} server process(es) "
        f"(ACTSCOPE_WORKERS={workers}), {os.cpu_count()} CPUs shared with the load generator; "
        f"load average before the run: {load}"
    )
    print(f"{'scenario':<34}{'requests':>9}{'errors':>8}{'p50 ms':>9}{'p99 ms':>9}{'req/s':>9}  target p50")


def unit_scenarios(model: dict, rng: random.Random, n_requests: int) -> list:
    """Unit JSON and HTML of distinct random units (first views), then the same again
    (served from the response cache)."""
    sources = [(s["slug"], s["n_units"]) for s in model["sources"]]
    all_units = [(slug, u) for slug, n in sources for u in range(n)]
    rng.shuffle(all_units)
    n_pages = min(n_requests, len(all_units) // 2)
    json_units, html_units = all_units[:n_pages], all_units[n_pages : 2 * n_pages]

    def unit_path(units, i: int) -> str:
        slug, u = units[i]
        return f"/{model['model']}/{slug}/{u}"

    return [
        ("unit JSON", lambda i: ("GET", "/api" + unit_path(json_units, i), None), n_pages, TARGETS_MS["unit JSON"]),
        (
            "unit JSON cached",
            lambda i: ("GET", "/api" + unit_path(json_units, i), None),
            n_pages,
            TARGETS_MS["unit JSON"],
        ),
        ("unit HTML", lambda i: ("GET", unit_path(html_units, i), None), n_pages, TARGETS_MS["unit HTML"]),
        ("unit HTML cached", lambda i: ("GET", unit_path(html_units, i), None), n_pages, TARGETS_MS["unit HTML"]),
    ]


def table_scenarios(base: str, model: dict, rng: random.Random, n_requests: int) -> list:
    """The largest source's table page (HTML), dead units shown (every row), sorted by
    each of its columns, random order and page; then token search by the top tokens of
    its units."""
    m = model["model"]
    src = max(model["sources"], key=lambda s: s["n_units"])
    table = get_json(f"{base}/api/{m}/{src['slug']}?hide_dead=false&per_page=500")
    n_pages = -(-table["total"] // 50)  # of the page's 50 rows
    out = []
    for col in [c["key"] for c in table["columns"]]:

        def make(i: int, col=col) -> tuple[str, str, None]:
            order = "asc" if i % 2 else "desc"
            page = rng.randrange(1, n_pages + 1)
            return "GET", f"/{m}/{src['slug']}?sort={col}&order={order}&hide_dead=false&page={page}", None

        out.append((f"{src['slug']} table by {col}", make, n_requests, TABLE_MS))
    tokens = sorted({u["top_token"] for u in table["units"] if u["top_token"]})
    rng.shuffle(tokens)
    tokens = tokens[:50] or ["the"]
    out.append(
        (
            "token search",
            lambda i: ("GET", f"/api/{m}/search?token={urllib.parse.quote(tokens[i % len(tokens)])}", None),
            n_requests,
            SEARCH_MS,
        )
    )
    return out


def similar_scenarios(base: str, model: dict, rng: random.Random, n_requests: int, clients: int) -> list:
    """A random unit's 20 neighbours over every source (scope=all): after a first call,
    which reads the fingerprints into memory. Not cached: each is a product with every
    unit's fingerprint."""
    m = model["model"]
    urllib.request.urlopen(f"{base}/api/{m}/{model['sources'][0]['slug']}/0/similar?scope=all&k=20").read()
    units = [(s["slug"], u) for s in model["sources"] for u in range(s["n_units"])]

    def make(i: int) -> tuple[str, str, None]:
        slug, u = units[rng.randrange(len(units))]
        return "GET", f"/api/{m}/{slug}/{u}/similar?scope=all&k=20", None

    return [("similar k=20 all sources, 1 client", make, n_requests, SIMILAR_MS, 1)] + (
        [(f"similar k=20 all sources, {clients} clients", make, n_requests, SIMILAR_MS, clients)] if clients > 1 else []
    )


def export_first_bytes(port: int, model: dict, rounds: int) -> bool:
    """Time to the first body bytes of each export of the largest source and of the
    first, one client; the connection is closed after them."""
    import http.client

    m = model["model"]
    sources = {max(model["sources"], key=lambda s: s["n_units"])["slug"], model["sources"][0]["slug"]}
    ok = True
    for slug in sorted(sources):
        for fmt in ("parquet", "jsonl"):
            times = []
            for _ in range(rounds):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
                t0 = time.perf_counter()
                conn.request("GET", f"/api/{m}/{slug}/export.{fmt}")
                resp = conn.getresponse()
                first = resp.read1(1)
                times.append(time.perf_counter() - t0)
                conn.close()
                if resp.status != 200 or not first:
                    print(f"   error: {resp.status} on export {slug}.{fmt}")
                    ok = False
                time.sleep(3)  # the server finishes the chunk it was reading, then stops that export
            worst = max(times) * 1000
            good = worst <= EXPORT_FIRST_BYTE_MS
            ok &= good
            print(
                f"{f'export {slug}.{fmt}, first byte':<34}{len(times):>9}{0:>8}{pct(times, 0.5) * 1000:>9.1f}"
                f"{worst:>9.1f}{'':>9}  max <= {EXPORT_FIRST_BYTE_MS:.0f} ms {'ok' if good else 'MISSED'}",
                flush=True,
            )
    return ok


def explain_scenario(base: str, model: dict, rng: random.Random, n_requests: int) -> tuple:
    """Explain one example: the first top example of a random unit of each source in
    turn (units without examples skipped), each asked once."""
    name, sources = model["model"], model["sources"]
    wanted: list[str] = []
    seen: set[tuple] = set()
    for i in range(n_requests * 20):
        if len(wanted) == n_requests:
            break
        s = sources[i % len(sources)]
        index = rng.randrange(s["n_units"])
        top = get_json(f"{base}/api/{name}/{s['slug']}/{index}")["top"]
        if not top or (s["slug"], index) in seen:
            continue
        seen.add((s["slug"], index))
        wanted.append(f"/api/{name}/{s['slug']}/{index}/explain?seq={top[0]['seq']}&pos={top[0]['pos']}")
    return ("explain one example, 1 client", lambda i: ("GET", wanted[i], None), len(wanted), EXPLAIN_MS)


def bench_index(index: str, args, rng: random.Random, live: bool) -> bool:
    live = live and not args.only_similar
    server, port, home = start_server(index, workers=args.workers)
    base = f"http://127.0.0.1:{port}"
    try:
        model = home["models"][0]
        sources = [(s["slug"], s["n_units"]) for s in model["sources"]]
        extra, scenarios, single, regex_scenario = "", [], None, None
        live = live and not args.units_only
        if live:
            slug_live, n_live = sources[0]
            # Warm-up: the live model loads.
            probe = get_json(
                base + f"/api/{model['model']}/activations", {"text": long_text(rng), "source": slug_live, "index": 0}
            )
            extra = f"; live texts of {len(probe['token_ids'])} tokens on {slug_live}"
        for i in range(20):  # warm code paths on units the scenarios do not use
            urllib.request.urlopen(f"{base}/{model['model']}/{sources[0][0]}/{i % sources[0][1]}?band=0").read()
        for s in model["sources"]:  # each source's table is built once, on its first view
            urllib.request.urlopen(f"{base}/{model['model']}/{s['slug']}").read()
        # No scenario may overlap a load in the background: the server loads its live model
        # at start (a few seconds of CPU), which only the live warm-up above waits for.
        settle = wait_idle(server.pid)
        extra += f"; server idle {settle:.0f} s after the warm-up"
        scenarios = unit_scenarios(model, rng, args.requests)
        if live:
            texts = [long_text(rng) for _ in range(args.live_requests)]
            scenarios.append(
                (
                    "live 128 tokens",
                    lambda i: (
                        "POST",
                        f"/api/{model['model']}/activations",
                        json.dumps({"text": texts[i], "source": slug_live, "index": rng.randrange(n_live)}).encode(),
                    ),
                    args.live_requests,
                    TARGETS_MS["live 128 tokens"],
                )
            )
            regex_units = [(slug, rng.randrange(n)) for slug, n in sources for _ in range(args.regex_requests)]
            rng.shuffle(regex_units)
            regex_scenario = (
                "regex over 256 sequences, 1 client",
                lambda i: (
                    "GET",
                    f"/api/{model['model']}/{regex_units[i][0]}/{regex_units[i][1]}/hypothesis?"
                    + urllib.parse.urlencode({"regex": REGEXES[i % len(REGEXES)], "sequences": 256, "seed": 1000 + i}),
                    None,
                ),
                args.regex_requests,
                REGEX_MS,
            )
            single_texts = [long_text(rng) for _ in range(60)]
            single = (
                "live 128 tokens, 1 client",
                lambda i: (
                    "POST",
                    f"/api/{model['model']}/activations",
                    json.dumps({"text": single_texts[i], "source": slug_live, "index": 0}).encode(),
                ),
                60,
                TARGETS_MS["live 128 tokens"],
            )
        header(index, model, args.clients, extra, args.workers)
        if live and args.only_explain:
            return report(port, [explain_scenario(base, model, rng, args.explain_requests)], 1)
        ok = True
        if not args.only_similar:
            ok &= report(port, scenarios, args.clients)
            if single:
                ok &= report(port, [single], 1)
            if regex_scenario:
                ok &= report(port, [regex_scenario], 1)
            if live:
                ok &= report(port, [explain_scenario(base, model, rng, args.explain_requests)], 1)
            if not args.units_only:
                ok &= report(port, table_scenarios(base, model, rng, args.table_requests), args.clients)
        if not args.units_only:
            for name, make, n, target, clients in similar_scenarios(
                base, model, rng, args.table_requests, args.clients
            ):
                ok &= report(port, [(name, make, n, target)], clients)
        if not (args.only_similar or args.units_only):
            ok &= export_first_bytes(port, model, args.export_rounds)
        return ok
    finally:
        stop_server(server)


def process_memory(pid: int) -> tuple[float, float]:
    """(resident set size, its peak) of a process, in MB, from /proc."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        fields[name] = value.split()
    return int(fields["VmRSS"][0]) / 1024, int(fields["VmHWM"][0]) / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process and its children (`serve`'s worker processes
    under ACTSCOPE_WORKERS) have used so far."""
    import psutil

    procs = [psutil.Process(pid)]
    procs += procs[0].children(recursive=True)
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def wait_idle(pid: int, limit_s: float = 600.0) -> float:
    """Seconds until the process uses less than a tenth of a core over 2 s (its
    background loads done)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        before = cpu_seconds(pid)
        time.sleep(2.0)
        if cpu_seconds(pid) - before < 0.2:
            break
    return time.perf_counter() - t0


def bench_million(index: str, args, rng: random.Random, resident_mb: str) -> bool:
    """The million-unit index under one memory budget: start time, loading, memory and
    every page scenario but live inference and export."""
    t0 = time.perf_counter()
    # One process: the memory figures are those of one server process.
    server, port, home = start_server(index, live="false", resident_mb=resident_mb, workers="1")
    started = time.perf_counter() - t0
    base = f"http://127.0.0.1:{port}"
    try:
        model = home["models"][0]
        m = model["model"]
        rss_start, _ = process_memory(server.pid)
        t1 = time.perf_counter()
        for s in model["sources"]:  # a first visit of each source asks for its unit data and builds its table
            urllib.request.urlopen(f"{base}/api/{m}/{s['slug']}/1").read()
            urllib.request.urlopen(f"{base}/{m}/{s['slug']}").read()
        first_search = time.perf_counter()
        get_json(f"{base}/api/{m}/search?token=ba")
        first_search = time.perf_counter() - first_search
        warm = time.perf_counter() - t1
        settle = wait_idle(server.pid)
        rss, peak = process_memory(server.pid)
        header(index, model, args.clients, f"; ACTSCOPE_RESIDENT_MB={resident_mb}, live off")
        print(
            f"start (process to first answer) {started:.1f} s; first visit of every source and first search "
            f"{warm:.1f} s (search alone {first_search:.1f} s); background loads {settle:.0f} s more; "
            f"RSS {rss_start:.0f} MB at start, {rss:.0f} MB loaded (peak {peak:.0f} MB)",
            flush=True,
        )
        ok = report(port, unit_scenarios(model, rng, args.requests), args.clients)
        ok &= report(port, table_scenarios(base, model, rng, args.table_requests), args.clients)
        rss, peak = process_memory(server.pid)
        print(f"RSS after the scenarios {rss:.0f} MB (peak {peak:.0f} MB)", flush=True)
        return ok
    finally:
        stop_server(server)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=None, help="Index file (default: build/reuse demo.duckdb)")
    ap.add_argument(
        "--big-index",
        default=None,
        metavar="PATH",
        help="Also run on the 102,400-unit index at PATH, built there first if missing (minutes; see bench/big_index.py)",
    )
    ap.add_argument("--big-only", action="store_true", help="Only the big index (with --big-index)")
    ap.add_argument(
        "--million",
        default=None,
        metavar="PATH",
        help="Only the 1,048,576-unit index at PATH, built there first if missing (see bench/million_index.py)",
    )
    ap.add_argument(
        "--resident-mb",
        default="4096,1024",
        help="ACTSCOPE_RESIDENT_MB budgets of the --million runs (comma-separated)",
    )
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument(
        "--workers",
        default="auto",
        help="ACTSCOPE_WORKERS of the server (default auto: one process per core; the --million runs use 1)",
    )
    ap.add_argument(
        "--requests",
        type=int,
        default=1000,
        help="Distinct units per page scenario (each requested twice: first view, cached)",
    )
    ap.add_argument("--live-requests", type=int, default=400, help="Requests of the live scenario")
    ap.add_argument("--regex-requests", type=int, default=10, help="Requests of the regex hypothesis scenario")
    ap.add_argument("--explain-requests", type=int, default=40, help="Requests of the explain scenario")
    ap.add_argument("--only-explain", action="store_true", help="Only the explain scenario (on the demo index)")
    ap.add_argument("--table-requests", type=int, default=200, help="Requests per table and search scenario")
    ap.add_argument("--export-rounds", type=int, default=3, help="Exports started per source and format")
    ap.add_argument(
        "--units-only", action="store_true", help="Only the unit page scenarios (no live, table, search, export)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only-similar", action="store_true", help="Only the neighbours (similar) scenarios")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    ok = True
    if args.million:
        sys.path.insert(0, str(Path(__file__).parent))
        from million_index import ensure_million_index

        index = str(ensure_million_index(args.million))
        for budget in args.resident_mb.split(","):
            ok &= bench_million(index, args, rng, budget.strip())
        return 0 if ok else 1
    if not args.big_only:
        index = args.index
        if index is None:
            from actscope.indexer.demo import build_demo_index

            index = "demo.duckdb"
            build_demo_index(index)
        ok &= bench_index(str(Path(index).resolve()), args, rng, live=True)
    if args.big_index:
        sys.path.insert(0, str(Path(__file__).parent))
        from big_index import ensure_big_index

        # Live inference is measured on the demo: the big model is random, its units too.
        ok &= bench_index(str(ensure_big_index(args.big_index)), args, rng, live=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
