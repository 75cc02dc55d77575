"""Fixtures for the web app tests (owned by the web explorer work).

TEMPORARY: `web_index` builds a small, internally consistent index with the real schema
until the lead's `tiny_index` fixture (a real `actscope index` run) lands.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

XSS_TOKEN = "<script>alert(1)</script>"


def build_fake_index(path) -> None:
    import duckdb

    from indexer.schema import create_all, create_indexes

    rng = np.random.default_rng(0)
    vocab = ["<|BOS|>", XSS_TOKEN, " the", " cat", " sat", " on", " mat", "&amp;", "\"q\""] + [
        f" w{i}" for i in range(55)
    ]
    n_seq, ctx = 12, 16
    seqs = rng.integers(1, len(vocab), size=(n_seq, ctx))
    seqs[:, 0] = 0
    con = duckdb.connect(str(path))
    create_all(con)
    con.execute("INSERT INTO meta VALUES ('corpus', ?)", [json.dumps({"name": "fake", "n_docs": 3})])
    con.execute(
        "INSERT INTO models VALUES ('tiny', ?, '{}', 2, 16, ?, 32, ?, 0, 0, ?, ?)",
        [json.dumps({"kind": "native", "name": "/nowhere", "slug": "tiny"}), len(vocab), ctx,
         n_seq, n_seq * (ctx - 1)],
    )
    con.executemany("INSERT INTO vocab VALUES ('tiny', ?, ?)", list(enumerate(vocab)))
    con.executemany("INSERT INTO sequences VALUES ('tiny', ?, ?)",
                    [(i, [int(t) for t in seqs[i]]) for i in range(n_seq)])
    for slug, kind, layer, n_units in [("0-mlp", "neuron", 0, 6), ("1-res-sae", "sae", 1, 5)]:
        hook = f"blocks.{layer}.mlp.hook_post" if kind == "neuron" else f"blocks.{layer}.hook_resid_post"
        con.execute("INSERT INTO sources VALUES ('tiny', ?, ?, ?, ?, ?, '{}', [0.0, 0.5, 0.9, 1.0], ?)",
                    [slug, hook, kind, layer, n_units, "all" if kind == "neuron" else "firing"])
        acts = rng.normal(size=(n_seq, ctx, n_units)).astype(np.float32)
        if kind == "sae":
            acts = np.maximum(acts, 0)
        acts[:, 0, :] = 0
        for u in range(n_units):
            a = acts[:, 1:, u]
            flat = a.ravel()
            counts, edges = np.histogram(flat, bins=10)
            con.execute(
                "INSERT INTO unit_stats VALUES ('tiny', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [slug, u, float(flat.max()), float(flat.min()), float(flat.mean()), float(flat.std()),
                 float((flat > 0).mean()), flat.size, int((flat > 0).sum()),
                 0.1 * u if kind == "neuron" else None, edges.tolist(), counts.tolist()],
            )
            order = np.argsort(-flat)[:5]
            rows = []
            for rank, idx in enumerate(order):
                seq, p = divmod(int(idx), ctx - 1)
                pos = p + 1
                start = max(0, pos - 4)
                end = min(ctx, pos + 2)
                rows.append((slug, u, None, rank, seq, pos, float(acts[seq, pos, u]), start,
                             [float(x) for x in acts[seq, start:end, u]]))
            qs = np.quantile(flat, [0.0, 0.5, 0.9, 1.0])
            for b in range(3):
                lo, hi = float(qs[b]), float(qs[b + 1])
                inside = (flat >= lo) & ((flat < hi) if b < 2 else (flat <= hi))
                con.execute("INSERT INTO bands VALUES ('tiny', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            [slug, u, b, [0.0, 0.5, 0.9][b], [0.5, 0.9, 1.0][b], lo, hi,
                             int(inside.sum()), float(inside.mean())])
                for rank, idx in enumerate(np.flatnonzero(inside)[:3]):
                    seq, p = divmod(int(idx), ctx - 1)
                    pos = p + 1
                    start = max(0, pos - 4)
                    end = min(ctx, pos + 2)
                    rows.append((slug, u, b, rank, seq, pos, float(acts[seq, pos, u]), start,
                                 [float(x) for x in acts[seq, start:end, u]]))
            con.executemany("INSERT INTO examples VALUES ('tiny', ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            con.execute("INSERT INTO logits VALUES ('tiny', ?, ?, ?, ?, ?, ?)",
                        [slug, u, [2, 3, 4], [1.5, 1.0, 0.5], [5, 6, 1], [-1.5, -1.0, -0.5]])
    create_indexes(con)
    con.close()


@pytest.fixture(scope="session")
def web_index(tmp_path_factory):
    path = tmp_path_factory.mktemp("webindex") / "fake.duckdb"
    build_fake_index(path)
    return path
