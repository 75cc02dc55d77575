"""Load test of `actscope serve` with locust: a mix of visitors, headless.

Starts `actscope serve INDEX` (the bundled demo by default) in a subprocess on
127.0.0.1, warms it up (the live model loads, each source's table is built), then runs
USERS locust users for DURATION seconds, each waiting 0.5 to 2 s between requests:

  40%  unit HTML     GET  /{model}/{source}/{index}       random units of every source
  25%  unit JSON     GET  /api/{model}/{source}/{index}   random units of every source
  15%  source table  GET  /{model}/{source}?sort=...      random column, order and page
  10%  search        GET  /{model}/search?token=...       top tokens of the sources' units
   8%  live text     POST /api/{model}/activations        a fresh ~128-token text each time
   2%  export        GET  /api/{model}/{source}/export.parquet   read to the end

It prints requests/s, p50/p95/p99 per route and the errors; 429 answers (a per-client
live budget, where the server has one) are counted apart, not as errors. The page and
JSON p50 goals of bench/server.py are checked under the mix; live latency is reported,
not gated: locust and the server share the machine's cores. The exit status says whether
there were no errors and every goal was met.

Usage (locust is the `bench` extra: pip install -e '.[bench]', or pip install locust):
  .venv/bin/python bench/load.py [--index demo.duckdb] [--users 64] [--duration 60]
"""

# locust patches the standard library for gevent when imported: it comes first.
from locust import FastHttpUser, between, task  # isort: skip
from locust.env import Environment  # isort: skip

import argparse  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import urllib.parse  # noqa: E402
import urllib.request  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from server import SEARCH_MS, TABLE_MS, TARGETS_MS, get_json, long_text, start_server, stop_server  # noqa: E402

GOALS_MS = {
    "unit HTML": TARGETS_MS["unit HTML"],
    "unit JSON": TARGETS_MS["unit JSON"],
    "source table": TABLE_MS,
    "search": SEARCH_MS,
}
ROUTES = ["unit HTML", "unit JSON", "source table", "search", "live text", "export"]


class Site:
    """What the users pick from: the model, its sources and units, table columns, tokens."""

    def __init__(self, base: str, model: dict):
        self.model = model["model"]
        self.sources = [(s["slug"], s["n_units"]) for s in model["sources"]]
        self.columns: dict[str, list[str]] = {}
        self.pages: dict[str, int] = {}
        tokens: set[str] = set()
        for slug, _ in self.sources:
            table = get_json(f"{base}/api/{self.model}/{slug}?hide_dead=false&per_page=500")
            self.columns[slug] = [c["key"] for c in table["columns"]]
            self.pages[slug] = -(-table["total"] // 50)
            tokens.update(u["top_token"] for u in table["units"] if u["top_token"])
        self.tokens = sorted(tokens) or ["the"]
        self.rate_limited: Counter[str] = Counter()


def make_user(site: Site, seed: int):
    rng = random.Random(seed)

    class Visitor(FastHttpUser):
        wait_time = between(0.5, 2)

        def unit(self) -> str:
            slug, n = rng.choice(site.sources)
            return f"/{site.model}/{slug}/{rng.randrange(n)}"

        def get(self, route: str, path: str, **kwargs) -> None:
            with self.client.get(path, name=route, catch_response=True, **kwargs) as resp:
                self._judge(route, resp)

        def _judge(self, route: str, resp) -> None:
            if resp.status_code == 429:
                site.rate_limited[route] += 1
                resp.success()  # counted apart: the server said "later", as it should under a budget
            elif resp.status_code != 200:
                resp.failure(f"{resp.status_code}: {(resp.text or '')[:120]}")

        @task(40)
        def unit_html(self):
            self.get("unit HTML", self.unit())

        @task(25)
        def unit_json(self):
            self.get("unit JSON", "/api" + self.unit())

        @task(15)
        def source_table(self):
            slug, _ = rng.choice(site.sources)
            col, order = rng.choice(site.columns[slug]), rng.choice(["asc", "desc"])
            page = rng.randrange(1, site.pages[slug] + 1)
            self.get("source table", f"/{site.model}/{slug}?sort={col}&order={order}&hide_dead=false&page={page}")

        @task(10)
        def search(self):
            token = urllib.parse.quote(rng.choice(site.tokens))
            self.get("search", f"/{site.model}/search?token={token}")

        @task(8)
        def live_text(self):
            slug, n = rng.choice(site.sources)
            body = {"text": long_text(rng), "source": slug, "index": rng.randrange(n)}
            path = f"/api/{site.model}/activations"
            with self.client.post(path, json=body, name="live text", catch_response=True) as resp:
                self._judge("live text", resp)

        @task(2)
        def export(self):
            slug, _ = rng.choice(site.sources)
            self.get("export", f"/api/{site.model}/{slug}/export.parquet")

    return Visitor


def warm_up(base: str, site: Site) -> None:
    """The live model loaded, each source's table built once (both happen once per server)."""
    slug, _ = site.sources[0]
    get_json(f"{base}/api/{site.model}/activations", {"text": long_text(random.Random(1)), "source": slug, "index": 0})
    for slug, _ in site.sources:
        urllib.request.urlopen(f"{base}/{site.model}/{slug}").read()


def report(env: Environment, site: Site, duration: float) -> bool:
    stats = env.stats
    total = stats.total
    print(
        f"\n{'route':<14}{'requests':>9}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'errors':>8}{'429':>6}  goal p50"
    )
    ok = True
    for route in ROUTES:
        entry = stats.entries.get((route, "POST" if route == "live text" else "GET"))
        if entry is None or entry.num_requests == 0:
            print(f"{route:<14}{0:>9}")
            continue
        p50, p95, p99 = (entry.get_response_time_percentile(q) for q in (0.5, 0.95, 0.99))
        goal = GOALS_MS.get(route)
        verdict = "reported, not gated" if goal is None else f"<= {goal:.0f} ms {'ok' if p50 <= goal else 'MISSED'}"
        ok &= goal is None or p50 <= goal
        print(
            f"{route:<14}{entry.num_requests:>9}{entry.num_requests / duration:>8.1f}{p50:>8.0f}{p95:>8.0f}{p99:>8.0f}"
            f"{entry.num_failures:>8}{site.rate_limited[route]:>6}  {verdict}"
        )
    n_429 = sum(site.rate_limited.values())
    print(
        f"\nall routes: {total.num_requests} requests, {total.num_requests / duration:.1f} requests/s, "
        f"{total.num_failures} errors, {n_429} answers 429 (counted apart)"
    )
    for (method, name), error in list(stats.errors.items())[:5]:
        print(f"   error: {method} {name}: {error.occurrences} x {error.error}")
    return ok and total.num_failures == 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", default=None, help="Index file (default: build/reuse demo.duckdb, the bundled demo)")
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--spawn-rate", type=float, default=16, help="Users started per second")
    ap.add_argument("--duration", type=float, default=60, help="Seconds of load, the ramp-up included")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    index = args.index
    if index is None:
        from actscope.indexer.demo import build_demo_index

        index = "demo.duckdb"
        build_demo_index(index)
    server, port, home = start_server(str(Path(index).resolve()))
    base = f"http://127.0.0.1:{port}"
    try:
        site = Site(base, home["models"][0])
        warm_up(base, site)
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        n_units = sum(n for _, n in site.sources)
        print(
            f"index {index}: model {site.model}, {len(site.sources)} sources, {n_units:,} units\n"
            f"{args.users} locust users on loopback for {args.duration:.0f} s, waiting 0.5-2 s between requests; "
            f"{os.cpu_count()} CPUs shared by locust and the server; load average before the run: {load}",
            flush=True,
        )
        env = Environment(user_classes=[make_user(site, args.seed)], host=base)
        runner = env.create_local_runner()
        runner.start(args.users, spawn_rate=args.spawn_rate)
        gevent.spawn_later(args.duration, runner.quit)
        runner.greenlet.join()
        ok = report(env, site, args.duration)
    finally:
        stop_server(server)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
