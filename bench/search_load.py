"""Token search against `actscope serve` with N clients: latency, requests/s, and the
server process's CPU time and context switches per request.

Starts `actscope serve INDEX` (live inference off) as bench/server.py does, visits every
source, makes one search and waits until the server is idle; then runs the token search
(JSON and page) and unit JSON first views with 16 clients, and the token search with
one. The server's CPU time (user + system, all its threads) and its threads' voluntary
and involuntary context switches are read from /proc before and after each scenario: a
route run in the threadpool hands the GIL between threads, which shows as voluntary
switches; one run on the event loop makes none. Run from outside the checkout; prefix
PYTHONPATH=DIR to serve another build's package.

Usage:
  .venv/bin/python bench/search_load.py big.duckdb [--requests 400] [--resident-mb 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import urllib.parse
import urllib.request
from pathlib import Path

import server as sb


def switches(pid: int) -> tuple[int, int]:
    """(voluntary, involuntary) context switches of all the process's threads so far."""
    counts = [0, 0]
    for status in Path(f"/proc/{pid}/task").glob("*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches"):
                    counts[0] += int(line.split()[1])
                elif line.startswith("nonvoluntary_ctxt_switches"):
                    counts[1] += int(line.split()[1])
        except OSError:  # a thread that ended meanwhile
            pass
    return counts[0], counts[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--resident-mb", default=None)
    args = ap.parse_args()
    settings = {"live": "false"} | ({"resident_mb": args.resident_mb} if args.resident_mb else {})
    server, port, home = sb.start_server(args.index, **settings)
    base = f"http://127.0.0.1:{port}"
    try:
        model = home["models"][0]
        m = model["model"]
        for s in model["sources"]:
            urllib.request.urlopen(f"{base}/api/{m}/{s['slug']}/1").read()
            urllib.request.urlopen(f"{base}/{m}/{s['slug']}").read()
        urllib.request.urlopen(f"{base}/api/{m}/search?token=the").read()
        print(
            f"{args.index}: server idle {sb.wait_idle(server.pid):.0f} s after the warm-up; load average "
            + ", ".join(f"{x:.1f}" for x in os.getloadavg()),
            flush=True,
        )
        src = max(model["sources"], key=lambda s: s["n_units"])
        table = sb.get_json(f"{base}/api/{m}/{src['slug']}?hide_dead=false&per_page=500")
        tokens = sorted({u["top_token"] for u in table["units"] if u["top_token"]})
        random.Random(1).shuffle(tokens)
        tokens = [urllib.parse.quote(t) for t in tokens[:50]] or ["the"]
        rng = random.Random(2)
        units = [(s["slug"], rng.randrange(s["n_units"])) for s in model["sources"] for _ in range(args.requests)]
        rng.shuffle(units)
        scenarios = [
            ("token search", 16, lambda i: ("GET", f"/api/{m}/search?token={tokens[i % len(tokens)]}", None)),
            ("search page", 16, lambda i: ("GET", f"/{m}/search?token={tokens[i % len(tokens)]}", None)),
            ("unit JSON", 16, lambda i: ("GET", f"/api/{m}/{units[i][0]}/{units[i][1]}", None)),
            ("token search", 1, lambda i: ("GET", f"/api/{m}/search?token={tokens[i % len(tokens)]}", None)),
        ]
        print(
            f"{'scenario':<14}{'clients':>8}{'p50 ms':>8}{'p99 ms':>8}{'req/s':>7}"
            f"{'CPU ms/req':>11}{'vol. sw/req':>12}{'invol./req':>11}"
        )
        for name, clients, make in scenarios:
            cpu0, (vol0, inv0) = sb.cpu_seconds(server.pid), switches(server.pid)
            lat, errors, wall = asyncio.run(sb.run_scenario(port, make, args.requests, clients))
            cpu1, (vol1, inv1) = sb.cpu_seconds(server.pid), switches(server.pid)
            n = max(1, len(lat))
            print(
                f"{name:<14}{clients:>8}{sb.pct(lat, 0.5) * 1e3:>8.1f}{sb.pct(lat, 0.99) * 1e3:>8.1f}"
                f"{len(lat) / wall:>7.0f}{(cpu1 - cpu0) / n * 1e3:>11.2f}{(vol1 - vol0) / n:>12.1f}"
                f"{(inv1 - inv0) / n:>11.1f}" + (f"  {len(errors)} errors" if errors else ""),
                flush=True,
            )
    finally:
        sb.stop_server(server)


if __name__ == "__main__":
    main()
