"""Token search on 102,400 units: p50 latency of /api/{model}/search and /{model}/search.

Builds (or reuses) a synthetic index with the real schema: 12 x 3,072 MLP neurons and a
65,536-feature SAE, 20 top examples per unit focused on tokens drawn with Zipf
frequencies from the bundled model's vocabulary (2,048,000 top examples), then times
token searches in process (Starlette's TestClient: the routes, the store, no network).
The first search builds the store's per-model lookup; it is timed apart.

Usage:
  .venv/bin/python bench/token_search.py [--index /tmp/token-search.duckdb] [--requests 30]

Prints the figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

SOURCES = [(f"{layer}-mlp", f"blocks.{layer}.mlp.hook_post", "neuron", layer, 3072) for layer in range(12)] + [
    ("11-res-sae", "blocks.11.hook_resid_post", "sae", 11, 65536)
]
TOP_K, N_SEQ, CTX = 20, 40, 128
QUERIES = ["the", " the", "def", "Def", "self", "x", "license", "zzzz"]


def vocabulary() -> list[str]:
    from tokenizers import Tokenizer

    from actscope.indexer import bundled

    path = Path(bundled.__file__).parent / "default" / "model" / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    return [tok.decode([i]) for i in range(tok.get_vocab_size())]


def build(out: Path) -> None:
    import duckdb
    import pandas as pd

    from actscope.indexer.store.schema import create_all

    rng = np.random.default_rng(0)
    vocab = vocabulary()
    con = duckdb.connect(str(out))
    create_all(con)
    con.execute(
        "INSERT INTO models VALUES ('big', '{}', '{}', 12, 256, ?, 128, ?, 0, 0, ?, ?)",
        [len(vocab), CTX, N_SEQ, N_SEQ * (CTX - 1)],
    )
    for slug, hook, kind, layer, n in SOURCES:
        con.execute(
            "INSERT INTO sources VALUES ('big', ?, ?, ?, ?, ?, '{}', [0.5, 0.9], 'all')", [slug, hook, kind, layer, n]
        )
    con.register("v", pd.DataFrame({"token_id": np.arange(len(vocab)), "token": vocab}))
    con.execute("INSERT INTO vocab SELECT 'big', token_id, token FROM v")
    p = 1.0 / np.arange(1, len(vocab) + 1) ** 1.1
    seqs = rng.choice(len(vocab), size=(N_SEQ, CTX), p=p / p.sum()).astype(np.int32)
    con.register("s", pd.DataFrame({"seq": np.arange(N_SEQ), "token_ids": list(seqs)}))
    con.execute("INSERT INTO sequences SELECT 'big', seq, token_ids FROM s")
    for slug, _, _, _, n in SOURCES:
        act = np.sort(rng.random((n, TOP_K)).astype(np.float32), axis=1)[:, ::-1].reshape(-1) * 10
        pos = rng.integers(8, CTX - 4, size=n * TOP_K)
        windows = np.concatenate([rng.random((n * TOP_K, 6)), act[:, None], rng.random((n * TOP_K, 3))], axis=1)
        frame = pd.DataFrame(
            {
                "unit": np.repeat(np.arange(n), TOP_K),
                "rank": np.tile(np.arange(TOP_K), n),
                "seq": rng.integers(0, N_SEQ, size=n * TOP_K),
                "pos": pos,
                "act": act,
                "start": pos - 6,
                "acts": list(windows.astype(np.float32)),
            }
        )
        con.register("e", frame)
        con.execute("INSERT INTO examples SELECT 'big', ?, unit, NULL, rank, seq, pos, act, start, acts FROM e", [slug])
        con.execute(
            "INSERT INTO unit_stats SELECT 'big', ?, range, 10, 0, 1, 1, 0.1, ?, 500, NULL, [0.0, 10.0], [?] "
            "FROM range(?)",
            [slug, N_SEQ * (CTX - 1), N_SEQ * (CTX - 1), n],
        )
        con.unregister("e")
    con.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--index", type=Path, default=Path("/tmp/token-search.duckdb"))
    ap.add_argument("--requests", type=int, default=30)
    args = ap.parse_args()
    if not args.index.exists():
        t = time.perf_counter()
        build(args.index)
        print(f"built {args.index} in {time.perf_counter() - t:.1f} s")

    from fastapi.testclient import TestClient

    from actscope.app.server import create_app
    from actscope.app.settings import Settings

    with TestClient(create_app(Settings(index_file=args.index, live=False, root_path=""))) as client:
        t = time.perf_counter()
        client.get("/api/big/search", params={"token": "the"}).raise_for_status()
        print(
            f"first search (builds the lookup of {sum(s[4] for s in SOURCES):,} units): {time.perf_counter() - t:.2f} s"
        )
        print(f"{'route':18} {'token':10} {'total':>6} {'p50 ms':>7} {'max ms':>7}")
        for query in QUERIES:
            for path in ("/api/big/search", "/big/search"):
                times = []
                for _ in range(args.requests):
                    t = time.perf_counter()
                    r = client.get(path, params={"token": query})
                    times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                total = client.get("/api/big/search", params={"token": query}).json()["total"]
                print(f"{path:18} {query!r:10} {total:6d} {statistics.median(times):7.1f} {max(times):7.1f}")


if __name__ == "__main__":
    main()
