"""Token search (JSON and page), two builds side by side: CPU time per request, and the ratio.

Each build answers the same token searches through its whole ASGI app in a process of
its own (no HTTP: the server's own work, not the load generator's; a sync route's hop
to the threadpool included, as in the server), alternately in batches, so both see the
machine at the same minutes; CPU time (not wall time) is counted, so other jobs on a
busy machine skew it less. The searches are those of bench/server.py: the top tokens of
the largest source's first 500 units, shuffled, the first `--tokens` of them, in turn.
Each worker first visits every source, makes one search (which builds the store's
lookup) and waits for the background loads. `--base-site DIR` is a folder holding
another build's installed `actscope` package (copy it from a venv's site-packages
before changing the code); the new side is the package this Python imports. Both must
answer the same bytes: the script checks every token's JSON and page first, and the
same in one source and on page 2.

Usage:
  .venv/bin/python bench/search_pages.py --index big.duckdb --base-site /tmp/base-site [--mb 4096]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import json
import os
import random
import sys
import time
import urllib.parse

from unit_pages import ask, compare_cpu, get_scope, spawn_worker, stop


def serve(index: str, mb: float, n_tokens: int) -> None:
    """The worker: on each stdin line "KIND START COUNT" make COUNT searches (KIND json or
    html) and print the CPU seconds; "hash" prints a digest of every search's answers."""
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    app = create_app(Settings(index_file=index, live=False, response_cache_mb=0, resident_mb=mb))
    served = app.state.catalog.models()[0]
    store, model = served.store, served.model

    async def call(path: str, query: str = "") -> bytes:
        body: list[bytes] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            if message["type"] == "http.response.body":
                body.append(message.get("body", b""))

        await app(get_scope(path, query), receive, send)
        return b"".join(body)

    async def main() -> None:
        sources = store.sources(model)
        for s in sources:
            await call(f"/api/{model}/{s.slug}/1")
            await call(f"/{model}/{s.slug}")
        await call(f"/api/{model}/search", "token=the")
        store.settle()
        big = max(sources, key=lambda s: s.n_units)
        table = json.loads(await call(f"/api/{model}/{big.slug}", "hide_dead=false&per_page=500"))
        tokens = sorted({u["top_token"] for u in table["units"] if u["top_token"]})
        random.Random(1).shuffle(tokens)
        queries = ["token=" + urllib.parse.quote(t) for t in tokens[:n_tokens] or ["the"]]
        for q in queries:  # warm up
            await call(f"/api/{model}/search", q)
            await call(f"/{model}/search", q)
        print("ready", flush=True)
        for line in sys.stdin:
            words = line.split()
            if words[0] == "hash":
                h = hashlib.sha256("\n".join(queries).encode())
                for q in queries:
                    for extra in ("", f"&source={big.slug}", "&page=2&per_page=7"):
                        h.update(await call(f"/api/{model}/search", q + extra))
                        h.update(await call(f"/{model}/search", q + extra))
                print(h.hexdigest(), flush=True)
                continue
            kind, start, count = words[0], int(words[1]), int(words[2])
            path = f"/api/{model}/search" if kind == "json" else f"/{model}/search"
            batch = [queries[i % len(queries)] for i in range(start, start + count)]
            gc.collect()
            t0 = time.process_time()
            for q in batch:
                await call(path, q)
            print(time.process_time() - t0, flush=True)

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", required=True)
    ap.add_argument("--base-site", required=True, help="Folder holding the other build's `actscope` package")
    ap.add_argument("--mb", type=float, default=4096, help="ACTSCOPE_RESIDENT_MB of both")
    ap.add_argument("--tokens", type=int, default=50, help="Tokens searched, in turn")
    ap.add_argument("--rounds", type=int, default=20, help="Batches per side and format")
    ap.add_argument("--batch", type=int, default=25, help="Searches per batch")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(args.index, args.mb, args.tokens)
        return 0

    options = ["--index", args.index, "--base-site", "-", "--mb", str(args.mb), "--tokens", str(args.tokens)]
    base, new = spawn_worker(__file__, args.base_site, options), spawn_worker(__file__, None, options)
    try:
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(f"{args.index}, ACTSCOPE_RESIDENT_MB={args.mb:g}; load average before the run: {load}")
        same = len({ask(p, "hash") for p in (base, new)}) == 1
        print(
            f"{args.tokens} tokens' searches (JSON and page; all sources, one, page 2): "
            f"{'the same bytes' if same else 'DIFFER'}"
        )
        for fmt in ("json", "html"):
            compare_cpu(base, new, fmt, args.rounds, args.batch, "search")
        return 0 if same else 1
    finally:
        stop((base, new))


if __name__ == "__main__":
    sys.exit(main())
