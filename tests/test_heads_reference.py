"""Attention-head sources against a brute-force reference: every metric recomputed from
TransformerLens' `run_with_cache` on the exact stored tokens, head by head and position
by position, then every statistic, top-k and band checked as for neurons. On the tiny
model and on a grouped-query attention model (a head reads its key/value group's values).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from fixtures_heads import HEAD_METRICS

from fixtures_models import TINY_CTX, TINY_INDEX_OPTIONS

ATOL = 2e-5


@pytest.fixture(scope="module", params=["tiny", "gqa"])
def indexed(request):
    if request.param == "tiny":
        return request.getfixturevalue("tiny_heads_index"), request.getfixturevalue("tiny_model_dir")
    return request.getfixturevalue("tiny_gqa_heads_index"), request.getfixturevalue("tiny_gqa_model_dir")


@pytest.fixture(scope="module")
def con(indexed):
    connection = duckdb.connect(str(indexed[0]), read_only=True)
    yield connection
    connection.close()


def _metrics(pattern, z, v, w_o, tokens) -> dict[str, np.ndarray]:
    """Every metric [n_seq, ctx, n_heads] by its definition, one (seq, head, d) at a time."""
    n_seq, n_heads, ctx, _ = pattern.shape
    group = n_heads // v.shape[2]
    out = {m: np.zeros((n_seq, ctx, n_heads)) for m in HEAD_METRICS}
    v_norm = np.linalg.norm(v, axis=-1)  # [seq, s, kv_head]
    for b in range(n_seq):
        for h in range(n_heads):
            for d in range(ctx):  # d = 0 (BOS) is never indexed, but shows in windows
                a = pattern[b, h, d, : d + 1]
                out["max-attn"][b, d, h] = max(a[1:], default=0.0)
                out["entropy"][b, d, h] = -sum(x * np.log(x) for x in a if x > 0)
                out["result-norm"][b, d, h] = np.linalg.norm(z[b, d, h] @ w_o[h])
                out["value-norm"][b, d, h] = np.linalg.norm(z[b, d, h])
                out["value-weighted-attn"][b, d, h] = max(
                    (a[s] * v_norm[b, s, h // group] for s in range(1, d + 1)), default=0.0
                )
                out["prev-token"][b, d, h] = a[d - 1] if d else 0.0
                earlier = [a[j + 1] for j in range(d) if tokens[b, j] == tokens[b, d]]
                out["induction"][b, d, h] = max(earlier, default=0.0)
    return out


@pytest.fixture(scope="module")
def reference(con, indexed):
    """{slug: activations [n_seq, ctx, n_heads]} from a plain full forward pass."""
    import torch

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    model = load_model(resolve_model_spec(str(indexed[1])), "cpu").model
    tokens = torch.tensor([r[0] for r in con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    acts = {}
    for layer in range(model.cfg.n_layers):
        per_metric = _metrics(
            *(cache[f"blocks.{layer}.attn.hook_{h}"].double().numpy() for h in ("pattern", "z", "v")),
            model.W_O[layer].detach().double().numpy(),
            tokens.numpy(),
        )
        acts.update({f"{layer}-attn-{m}": values for m, values in per_metric.items()})
    return acts


SLUGS = [f"{layer}-attn-{metric}" for metric in HEAD_METRICS for layer in (0, 1)]


def test_sources_and_no_logits(con, reference):
    rows = con.execute("SELECT slug, hook_name, kind, layer, n_units, band_basis FROM sources").fetchall()
    assert sorted(r[0] for r in rows) == sorted(SLUGS)
    for slug, hook, kind, layer, n_units, basis in rows:
        own = "hook_z" if slug.endswith(("result-norm", "value-norm")) else "hook_pattern"
        assert (hook, kind, n_units, basis) == (f"blocks.{layer}.attn.{own}", "head", 4, "all")
        assert slug.startswith(f"{layer}-attn-")
    assert con.execute("SELECT count(*) FROM logits").fetchone()[0] == 0


@pytest.mark.parametrize("slug", SLUGS)
def test_statistics(con, reference, slug):
    rows = con.execute(
        "SELECT unit, max, min, mean, std, density, n_tokens, n_fired, hist_counts "
        "FROM unit_stats WHERE source = ? ORDER BY unit",
        [slug],
    ).fetchall()
    assert len(rows) == 4
    for unit, mx, mn, mean, std, density, n_tokens, n_fired, counts in rows:
        values = reference[slug][:, 1:, unit].reshape(-1)  # d = 0 never indexed
        assert n_tokens == values.size == sum(counts)
        assert (mx, mn, mean, std) == pytest.approx((values.max(), values.min(), values.mean(), values.std()), abs=ATOL)
        assert n_fired == int((values > 0).sum())
        assert density == pytest.approx((values > 0).mean())


@pytest.mark.parametrize("slug", SLUGS)
def test_top_k_is_exact(con, reference, slug):
    k = TINY_INDEX_OPTIONS["top_k"]
    before, after = TINY_INDEX_OPTIONS["window"]
    acts = reference[slug]
    for unit in range(4):
        examples = con.execute(
            "SELECT rank, seq, pos, act, start, acts FROM examples "
            "WHERE source = ? AND unit = ? AND band IS NULL ORDER BY rank",
            [slug, unit],
        ).fetchall()
        expected = np.sort(acts[:, 1:, unit].reshape(-1))[::-1][:k]
        np.testing.assert_allclose([e[3] for e in examples], expected, atol=ATOL)
        assert len({(e[1], e[2]) for e in examples}) == k
        for _, seq, pos, act, start, window in examples:
            assert pos >= 1
            assert act == pytest.approx(acts[seq, pos, unit], abs=ATOL)
            assert start == max(0, pos - before) and start + len(window) == min(TINY_CTX, pos + after + 1)
            np.testing.assert_allclose(window, acts[seq, start : start + len(window), unit], atol=ATOL)


@pytest.mark.parametrize("slug", SLUGS)
def test_bands_hold_exactly_their_tokens(con, reference, slug):
    band_size = TINY_INDEX_OPTIONS["band_size"]
    for unit in range(4):
        values = reference[slug][:, 1:, unit].reshape(-1)
        bands = con.execute(
            "SELECT band, lo, hi, count FROM bands WHERE source = ? AND unit = ? ORDER BY band", [slug, unit]
        ).fetchall()
        assert sum(b[3] for b in bands) == values.size
        lowest = min(b[0] for b in bands if b[3] > 0)
        for band, lo, hi, count in bands:
            low_ok = values >= lo - ATOL if band == lowest else values > lo + ATOL
            sure = int((low_ok & (values <= hi - ATOL)).sum())
            loose = int(((values >= lo - ATOL) & (values <= hi + ATOL)).sum())
            assert sure <= count <= loose, (slug, unit, band)
            stored = con.execute(
                "SELECT act FROM examples WHERE source = ? AND unit = ? AND band = ?", [slug, unit, band]
            ).fetchall()
            assert len(stored) == min(band_size, count)
            assert all(lo <= a <= hi for (a,) in stored)


def test_unknown_metric_is_refused(tmp_path, tiny_model_dir, tiny_corpus_dir):
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.errors import ActscopeError

    with pytest.raises(ActscopeError, match=r"--heads induction-ish: no such head metric \(known: max-attn, "):
        IndexConfig(
            model=str(tiny_model_dir),
            dataset=str(tiny_corpus_dir),
            out=str(tmp_path / "x.duckdb"),
            heads=["induction-ish"],
        )
