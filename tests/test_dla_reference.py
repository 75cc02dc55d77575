"""--dla twins against a brute-force reference: TransformerLens' `cache.apply_ln_to_stack`
on each unit's contribution act[p, u]·d_u, then `@ W_U` at the next token, from a plain
full forward pass (run_with_cache) over the token ids stored in the index; every
statistic recomputed with numpy over positions 1 .. ctx-2 (the last one has no next
token and is not indexed)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
import pytest

from fixtures_models import TINY_CTX, TINY_INDEX_OPTIONS

TWINS = ["0-mlp-dla", "1-mlp-dla", "1-res-sae-dla"]


@pytest.fixture(scope="module")
def dla_index(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus_dir) -> Path:
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("index") / "tiny-dla.duckdb"
    options = {**TINY_INDEX_OPTIONS, "max_tokens": TINY_CTX * 8 * 4}
    run_index(
        IndexConfig(
            model=str(tiny_model_dir),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            saes=[str(tiny_sae_dir)],
            dla=True,
            **options,
        )
    )
    return out


@pytest.fixture(scope="module")
def con(dla_index):
    connection = duckdb.connect(str(dla_index), read_only=True)
    yield connection
    connection.close()


def direct_effects(model, cache, tokens, acts, directions):
    """[S, P, U] direct effect of each unit on the next token's logit (NaN at the last
    position), via apply_ln_to_stack and W_U."""
    import torch

    stack = acts.permute(2, 0, 1)[..., None] * directions[:, None, None, :]  # [U, S, P, d_model]
    normed = cache.apply_ln_to_stack(stack, layer=None)
    w_ln = getattr(model.ln_final, "w", None)
    if w_ln is not None:  # apply_ln_to_stack leaves a weight that is not folded into W_U to the caller
        normed = normed * w_ln
    following = torch.cat([tokens[:, 1:], tokens[:, :1]], 1)
    columns = model.W_U[:, following].permute(1, 2, 0)  # [S, P, d_model]
    effect = (normed * columns[None]).sum(-1).permute(1, 2, 0)  # [S, P, U]
    effect[:, -1, :] = float("nan")
    return effect.numpy()


@pytest.fixture(scope="module")
def reference(con, tiny_model_dir, tiny_sae_dir):
    import torch
    from sae_lens import SAE

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    model = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu").model
    sae = SAE.load_from_disk(str(tiny_sae_dir))
    tokens = torch.tensor([r[0] for r in con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        acts = {
            "0-mlp-dla": (cache["blocks.0.mlp.hook_post"], model.blocks[0].mlp.W_out),
            "1-mlp-dla": (cache["blocks.1.mlp.hook_post"], model.blocks[1].mlp.W_out),
            "1-res-sae-dla": (sae.encode(cache["blocks.1.hook_resid_post"]), sae.W_dec),
        }
        return {slug: direct_effects(model, cache, tokens, a, d) for slug, (a, d) in acts.items()}


def indexed_values(reference, slug, unit):
    return reference[slug][:, 1:-1, unit].reshape(-1).astype(np.float64)


def test_twins_are_sources_of_their_own(con):
    rows = dict(con.execute("SELECT slug, kind FROM sources").fetchall())
    assert rows == {"0-mlp": "neuron", "1-mlp": "neuron", "1-res-sae": "sae", **dict.fromkeys(TWINS, "dla")}


@pytest.mark.parametrize("slug", TWINS)
def test_statistics_count_only_positions_with_a_next_token(con, reference, slug):
    rows = con.execute(
        "SELECT unit, max, min, mean, std, density, n_tokens, hist_counts FROM unit_stats WHERE source = ? ORDER BY unit",
        [slug],
    ).fetchall()
    n_seq = reference[slug].shape[0]
    for unit, mx, mn, mean, std, density, n_tokens, counts in rows:
        values = indexed_values(reference, slug, unit)
        assert n_tokens == values.size == n_seq * (TINY_CTX - 2)
        scale = max(1.0, np.abs(values).max())
        assert mx == pytest.approx(values.max(), abs=1e-5 * scale)
        assert mn == pytest.approx(values.min(), abs=1e-5 * scale)
        assert mean == pytest.approx(values.mean(), abs=1e-5 * scale)
        assert std == pytest.approx(values.std(), abs=1e-5 * scale)
        assert density == pytest.approx((values > 0).mean())
        assert sum(counts) == n_tokens


@pytest.mark.parametrize("slug", TWINS)
def test_top_k_is_exact_and_never_the_last_position(con, reference, slug):
    k = TINY_INDEX_OPTIONS["top_k"]
    before, after = TINY_INDEX_OPTIONS["window"]
    effects = reference[slug]
    n_units = effects.shape[-1]
    checked = 0
    for unit in range(n_units):
        examples = con.execute(
            "SELECT seq, pos, act, start, acts FROM examples WHERE source = ? AND unit = ? AND band IS NULL ORDER BY rank",
            [slug, unit],
        ).fetchall()
        values = indexed_values(reference, slug, unit)
        expected = np.sort(values)[::-1][:k]
        scale = max(1.0, np.abs(values).max())
        np.testing.assert_allclose([e[2] for e in examples], expected, atol=1e-5 * scale)
        for seq, pos, act, start, window in examples:
            assert 1 <= pos <= TINY_CTX - 2
            assert act == pytest.approx(effects[seq, pos, unit], abs=1e-5 * scale)
            assert start == max(0, pos - before)
            # The window stops before the last token, which has no value.
            assert start + len(window) == min(TINY_CTX - 1, pos + after + 1)
            np.testing.assert_allclose(window, effects[seq, start : start + len(window), unit], atol=1e-5 * scale)
            checked += 1
    assert checked >= n_units * k // 2


@pytest.mark.parametrize("slug", TWINS)
def test_band_counts_and_samples(con, reference, slug):
    import torch

    from actscope.indexer.accumulate.sampling import token_keys

    band_size = TINY_INDEX_OPTIONS["band_size"]
    n_seq, ctx, n_units = reference[slug].shape
    token_ids = (np.arange(n_seq)[:, None] * ctx + np.arange(ctx)[None, :])[:, 1:-1].reshape(-1)
    keys = token_keys(torch.tensor(token_ids), 0).numpy()
    for unit in range(0, n_units, 7):
        values = indexed_values(reference, slug, unit)
        bands = con.execute(
            "SELECT band, lo, hi, count FROM bands WHERE source = ? AND unit = ? ORDER BY band", [slug, unit]
        ).fetchall()
        assert sum(b[3] for b in bands) == values.size
        lowest = min(b[0] for b in bands if b[3] > 0)
        tol = 1e-6 * max(1.0, np.abs(values).max())  # the reference sums in another order
        for band, lo, hi, count in bands:
            sure = (values <= hi - tol) & ((values >= lo + tol) if band == lowest else (values > lo + tol))
            maybe = (values <= hi + tol) & ((values >= lo - tol) if band == lowest else (values > lo - tol))
            assert sure.sum() <= count <= maybe.sum(), (slug, unit, band)
            samples = con.execute(
                "SELECT seq, pos FROM examples WHERE source = ? AND unit = ? AND band = ? ORDER BY rank",
                [slug, unit, band],
            ).fetchall()
            taken = [s[0] * ctx + s[1] for s in samples]
            if sure.sum() == maybe.sum():  # no value on an edge: the sample is exactly known
                chosen = np.argsort(keys[sure], kind="stable")[:band_size]
                assert taken == token_ids[sure][chosen].tolist()
            else:
                assert set(taken) <= set(token_ids[maybe].tolist()) and len(taken) == min(band_size, count)


def test_base_sources_are_unchanged_by_their_twins(con, tiny_index):
    """The twins' last-position rule leaves the other sources' positions alone."""
    with duckdb.connect(str(tiny_index), read_only=True) as plain:
        n_plain = plain.execute("SELECT n_tokens FROM unit_stats WHERE source = '0-mlp' LIMIT 1").fetchone()
    n_here = con.execute("SELECT n_tokens FROM unit_stats WHERE source = '0-mlp' LIMIT 1").fetchone()
    n_seq = con.execute("SELECT n_sequences FROM models").fetchone()[0]
    assert n_here[0] == n_seq * (TINY_CTX - 1)
    assert n_plain[0] % (TINY_CTX - 1) == 0
    last = con.execute("SELECT max(pos) FROM examples WHERE source = '0-mlp'").fetchone()[0]
    assert last == TINY_CTX - 1
