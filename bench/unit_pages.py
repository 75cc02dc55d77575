"""Unit pages' first views, two builds side by side: CPU time per request, and the ratio.

Each build serves the same units' first views (every unit once, the response cache
off) through its whole ASGI app in a process of its own (no HTTP: the server's own
work, not the load generator's), alternately in batches, so both see the machine at
the same minutes; CPU time (not wall time) is counted, so other jobs on a busy machine
skew it less. `--base-site DIR` is a folder holding another build's installed
`actscope` package (copy it from a venv's site-packages before changing the code); the
new side is the package this Python imports. Both must render the same bytes: the
script checks a few hundred units' pages first.

Usage:
  .venv/bin/python bench/unit_pages.py --index demo.duckdb --base-site /tmp/base-site
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time


def get_scope(path: str, query: str = "") -> dict:
    """The ASGI scope of a plain GET of `path` from 127.0.0.1 (the app called without HTTP)."""
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(b"host", b"127.0.0.1")],
        "root_path": "",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
    }


def spawn_worker(script: str, site: str | None, options: list[str]) -> subprocess.Popen:
    """`script --serve OPTIONS` in a process importing the `actscope` of folder `site`
    (None: this Python's own), once it says it is ready."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    env.pop("PYTHONPATH", None)
    if site:
        env["PYTHONPATH"] = site
    cmd = [sys.executable, os.path.abspath(script), "--serve", *options]
    p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    if p.stdout.readline().strip() != "ready":
        raise SystemExit("a worker did not start")
    return p


def ask(p: subprocess.Popen, line: str) -> str:
    """A worker's one-line answer to one command."""
    p.stdin.write(line + "\n")
    p.stdin.flush()
    return p.stdout.readline().strip()


def compare_cpu(base: subprocess.Popen, new: subprocess.Popen, fmt: str, rounds: int, batch: int, per: str) -> None:
    """Batches of `fmt` requests on both workers, alternating which goes first; prints
    each side's CPU per request and their ratio."""
    times: dict[str, list[float]] = {"base": [], "new": []}
    for r in range(rounds):
        order = [("base", base), ("new", new)]
        if r % 2:
            order.reverse()
        for name, p in order:
            times[name].append(float(ask(p, f"{fmt} {r * batch} {batch}")))
    n = rounds * batch
    ratios = [b and a / b for a, b in zip(times["new"], times["base"])]
    print(
        f"{fmt}: base {1000 * sum(times['base']) / n:.3f} ms CPU per {per}, "
        f"new {1000 * sum(times['new']) / n:.3f}; new / base {sum(times['new']) / sum(times['base']):.3f} "
        f"(median of {rounds} batches {statistics.median(ratios):.3f})",
        flush=True,
    )


def stop(workers: tuple[subprocess.Popen, ...]) -> None:
    for p in workers:
        p.stdin.close()
        p.wait()


def serve(index: str) -> None:
    """The worker: on each stdin line "KIND START COUNT" serve COUNT units' first views
    (KIND json or html) and print the CPU seconds; "hash KIND START COUNT" prints a
    digest of those pages (with a band and a page of examples too)."""
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=index, live=False, response_cache_mb=0))
    catalog = getattr(app.state, "catalog", None)  # a build from before several indexes has one store
    model, store = catalog.stores()[0] if catalog else (app.state.store.models()[0].model, app.state.store)
    units = [(s.slug, u) for s in store.sources(model) for u in range(s.n_units)]
    random.Random(0).shuffle(units)

    async def call(path: str, query: str = "") -> bytes:
        scope = get_scope(path, query)
        body: list[bytes] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await app(scope, receive, send)
        return b"".join(body)

    async def main() -> None:
        for slug, u in units[-20:]:  # warm up on units the batches never ask for
            await call(f"/{model}/{slug}/{u}")
            await call(f"/api/{model}/{slug}/{u}")
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            digest = words[0] == "hash"
            fmt, start, count = words[1:] if digest else words
            prefix = "/api" if fmt == "json" else ""
            paths = [f"{prefix}/{model}/{slug}/{u}" for slug, u in units[int(start) : int(start) + int(count)]]
            if digest:
                h = hashlib.sha256()
                for path in paths:
                    for query in ("", "band=0", "band=3", "page=2&per_page=7"):
                        h.update(await call(path, query))
                print(h.hexdigest(), flush=True)
                continue
            gc.collect()
            t0 = time.process_time()
            for path in paths:
                await call(path)
            print(time.process_time() - t0, flush=True)

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--base-site", required=True, help="Folder holding the other build's `actscope` package")
    ap.add_argument("--rounds", type=int, default=20, help="Batches per side and format")
    ap.add_argument("--batch", type=int, default=30, help="Units per batch")
    ap.add_argument("--check", type=int, default=200, help="Units whose pages must be the same bytes")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.index)
        return 0

    options = ["--index", args.index, "--base-site", "-"]
    base, new = spawn_worker(__file__, args.base_site, options), spawn_worker(__file__, None, options)
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"load average before the run: {load}")
        same = True
        for fmt in ("json", "html"):
            digests = {ask(p, f"hash {fmt} 0 {args.check}") for p in (base, new)}
            print(f"{fmt}: {args.check} units' pages {'the same bytes' if len(digests) == 1 else 'DIFFER'}")
            same &= len(digests) == 1
        for fmt in ("json", "html"):
            compare_cpu(base, new, fmt, args.rounds, args.batch, "request")
        return 0 if same else 1
    finally:
        stop((base, new))


if __name__ == "__main__":
    sys.exit(main())
