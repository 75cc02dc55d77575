"""Instructions per unit first view, counted by callgrind: a measure of the server's own
work per request that other jobs on a shared machine do not move (unlike CPU time).

Run under valgrind with instrumentation off at start; the script serves 20 units to
warm up, turns counting on (callgrind_control) for COUNT first views of distinct random
units through the whole ASGI app (no HTTP, response cache off), and off again. Divide
callgrind's "Collected" total by COUNT. Another build: put the folder holding its
`actscope` package first on PYTHONPATH. Cache misses are not counted.

Usage:
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/dev/null \\
    .venv/bin/python bench/unit_instructions.py demo.duckdb html 50
"""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys

from unit_pages import get_scope  # a sibling script: bench/ is first on the path


def main() -> None:
    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    index, fmt, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    app = create_app(Settings(index_file=index, live=False, response_cache_mb=0))
    model, store = app.state.catalog.stores()[0]
    units = [(s.slug, u) for s in store.sources(model) for u in range(s.n_units)]
    random.Random(3).shuffle(units)
    prefix = "/api" if fmt == "json" else ""

    async def call(path: str) -> None:
        scope = get_scope(path)

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            pass

        await app(scope, receive, send)

    def counting(on: bool) -> None:
        subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())], stdout=subprocess.DEVNULL)

    async def run() -> None:
        for slug, u in units[-20:]:
            await call(f"{prefix}/{model}/{slug}/{u}")
        paths = [f"{prefix}/{model}/{slug}/{u}" for slug, u in units[:count]]
        counting(True)
        for path in paths:
            await call(path)
        counting(False)

    asyncio.run(run())


if __name__ == "__main__":
    main()
