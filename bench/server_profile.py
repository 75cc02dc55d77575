"""CPU time per request of the server's page scenarios, in process, under one memory budget.

The app (live inference off, response cache off) is built over INDEX with
ACTSCOPE_RESIDENT_MB=MB and driven through httpx's ASGI transport, one request at a
time, every route's threadpool hop made inline: each request's whole cost (DuckDB's
threads included) is this process's CPU time, which other jobs on a shared machine skew
far less than wall time. First every source is visited once (its unit data asked for,
its table built), token search is run once and the background loads are waited for; then
the scenarios of bench/server.py: random units' JSON and HTML (first views), the largest
source's table page sorted by each column (random page and order), and token search by
the top tokens of its units. Time spent in Python's garbage collector is shown apart.
`--profile unit_html,search` prints cProfile's view of those scenarios.

Usage (from outside the checkout, so that the installed package is imported):
  .venv/bin/python bench/server_profile.py million.duckdb --mb 4096 [--n 400] [--profile unit_html]
  PYTHONPATH=/tmp/base-site .venv/bin/python bench/server_profile.py ...   # another build
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import random
import resource
import time
import urllib.parse

GC = {"seconds": 0.0, "started": 0.0}


def _gc(phase: str, info: dict) -> None:
    if phase == "start":
        GC["started"] = time.perf_counter()
    else:
        GC["seconds"] += time.perf_counter() - GC["started"]


async def _inline(fn, *args, **kwargs):
    return fn(*args, **kwargs)


def build_app(index: str, mb: float):
    # Every request on this thread: its CPU time and its profile are all of it.
    import fastapi.dependencies.utils
    import fastapi.routing

    from actscope.app import fast_route, routes_api, routes_html
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    for module in (fast_route, routes_api, routes_html, fastapi.routing, fastapi.dependencies.utils):
        module.run_in_threadpool = _inline  # type: ignore[attr-defined]
    return create_app(Settings(index_file=index, resident_mb=mb, live=False, response_cache_mb=0, root_path=""))


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def run(args) -> None:
    import httpx

    t0 = time.perf_counter()
    app = build_app(args.index, args.mb)
    served = app.state.catalog.models()[0]
    store, m = served.store, served.model
    sources = store.sources(m)
    rng = random.Random(args.seed)
    print(f"{args.index}, ACTSCOPE_RESIDENT_MB={args.mb:g}: app built in {time.perf_counter() - t0:.1f} s", flush=True)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as client:
        t1 = time.perf_counter()
        for s in sources:
            (await client.get(f"/api/{m}/{s.slug}/1")).raise_for_status()
            (await client.get(f"/{m}/{s.slug}")).raise_for_status()
        t2 = time.perf_counter()
        (await client.get(f"/api/{m}/search?token=ba")).raise_for_status()
        t3 = time.perf_counter()
        store.settle()
        print(
            f"first visit of every source {t2 - t1:.1f} s, first search {t3 - t2:.1f} s, background loads "
            f"{time.perf_counter() - t3:.1f} s; held {store.resident_bytes / 2**20:,.0f} MB; "
            f"peak RSS {peak_rss_mb():,.0f} MB",
            flush=True,
        )
        per_source = args.n // len(sources) + 1
        units = [(s.slug, u) for s in sources for u in rng.sample(range(s.n_units), min(per_source, s.n_units))]
        rng.shuffle(units)
        units = units[: args.n]
        big = max(sources, key=lambda s: s.n_units)
        table = (await client.get(f"/api/{m}/{big.slug}?hide_dead=false&per_page=500")).json()
        n_pages = -(-table["total"] // 50)
        tokens = sorted({u["top_token"] for u in table["units"] if u["top_token"]})
        rng.shuffle(tokens)
        tokens = tokens[:50] or ["the"]
        scenarios = {
            "unit JSON": [f"/api/{m}/{s}/{u}" for s, u in units],
            # Other units than the JSON's (the store keeps nothing per unit, but be fair).
            "unit HTML": [f"/{m}/{s}/{(u + 1) % big.n_units}" for s, u in units],
        }
        for col in [c["key"] for c in table["columns"]]:
            scenarios[f"table by {col}"] = [
                f"/{m}/{big.slug}?sort={col}&order={'asc' if i % 2 else 'desc'}&hide_dead=false"
                f"&page={rng.randrange(1, n_pages + 1)}"
                for i in range(args.n // 3)
            ]
        scenarios["token search"] = [
            f"/api/{m}/search?token={urllib.parse.quote(tokens[i % len(tokens)])}" for i in range(args.n // 3)
        ]
        gc.callbacks.append(_gc)
        print(f"{'scenario':<22}{'requests':>9}{'CPU p50 ms':>12}{'CPU mean':>10}{'GC mean':>9}{'wall p50':>10}")
        for name, paths in scenarios.items():
            profile = cProfile.Profile() if any(name.startswith(p) for p in args.profile.split(",") if p) else None
            cpu, wall = [], []
            GC["seconds"] = 0.0
            for path in paths:
                w, c = time.perf_counter(), time.process_time()
                if profile is not None:
                    profile.enable()
                r = await client.get(path)
                if profile is not None:
                    profile.disable()
                wall.append(time.perf_counter() - w)
                cpu.append(time.process_time() - c)
                r.raise_for_status()
            cpu.sort()
            wall.sort()
            n = len(paths)
            print(
                f"{name:<22}{n:>9}{cpu[n // 2] * 1e3:>12.2f}{sum(cpu) / n * 1e3:>10.2f}"
                f"{GC['seconds'] / n * 1e3:>9.2f}{wall[n // 2] * 1e3:>10.2f}",
                flush=True,
            )
            if profile is not None:
                out = io.StringIO()
                pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
                print(out.getvalue())
        gc.callbacks.remove(_gc)
    held: dict[str, int] = {}
    for key, size, _ in store.budget.report()["parts"]:
        kind = key.split("'")[1]
        held[kind] = held.get(kind, 0) + size
    print("held: " + ", ".join(f"{k} {v / 2**20:,.1f} MB" for k, v in held.items()))
    print(f"peak RSS {peak_rss_mb():,.0f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("index")
    ap.add_argument("--mb", type=float, default=4096, help="ACTSCOPE_RESIDENT_MB")
    ap.add_argument("--n", type=int, default=400, help="Units per unit scenario (a third of it per table and search)")
    ap.add_argument("--profile", default="", help="Scenarios to profile (name prefixes, comma-separated)")
    ap.add_argument("--top", type=int, default=30, help="Functions shown per profile")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="disabled")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
