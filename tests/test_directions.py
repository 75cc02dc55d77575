"""Random directions (`--directions N@HOOK`) against a brute-force reference: the stored
directions are unit-norm seeded Gaussian draws, and every statistic, top example and
logit effect matches the projections computed from TransformerLens' run_with_cache."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest

from fixtures_models import TINY_INDEX_OPTIONS

ATOL = 1e-5
SEED = 7
# (option, slug, hook): a duplicate hook gets the next free slug.
DIRECTIONS = [
    ("6@blocks.1.mlp.hook_post", "1-mlp-rand", "blocks.1.mlp.hook_post"),
    ("5@blocks.0.hook_resid_pre", "0-res-pre-rand", "blocks.0.hook_resid_pre"),
    ("4@blocks.0.attn.hook_z", "0-att-rand", "blocks.0.attn.hook_z"),
    ("3@blocks.1.mlp.hook_pre", "1-mlp-pre-rand", "blocks.1.mlp.hook_pre"),
    ("2@blocks.1.mlp.hook_post", "1-mlp-rand-2", "blocks.1.mlp.hook_post"),
]


@pytest.fixture(scope="module")
def index(tmp_path_factory, tiny_model_dir, tiny_corpus_dir):
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("directions") / "directions.duckdb"
    options = {**TINY_INDEX_OPTIONS, "max_tokens": TINY_INDEX_OPTIONS["ctx"] * 8 * 6}
    run_index(
        IndexConfig(
            model=str(tiny_model_dir),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            neuron_hooks=["blocks.1.mlp.hook_post"],
            directions=[option for option, _, _ in DIRECTIONS],
            seed=SEED,
            **options,
        )
    )
    return out


@pytest.fixture(scope="module")
def con(index):
    connection = duckdb.connect(str(index), read_only=True)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def reference(con, tiny_model_dir):
    """(activations {slug: [n_seq, ctx, n]}, stored directions {slug: [n, width]}, model)
    from a plain full forward pass over the stored tokens."""
    import torch

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    loaded = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu")
    tokens = torch.tensor([r[0] for r in con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()])
    with torch.no_grad():
        _, cache = loaded.model.run_with_cache(tokens)
    acts, stored = {}, {}
    for _, slug, hook in DIRECTIONS:
        rows = con.execute("SELECT unit, direction FROM directions WHERE source = ? ORDER BY unit", [slug]).fetchall()
        assert [u for u, _ in rows] == list(range(len(rows)))
        stored[slug] = np.array([d for _, d in rows], dtype=np.float64)
        flat = cache[hook].reshape(*tokens.shape, -1).double().numpy()
        acts[slug] = flat @ stored[slug].T
    return acts, stored, loaded.model


def test_sources_slugs_and_kind(con):
    from actscope.indexer.kinds.direction import DirectionKind

    rows = con.execute(
        "SELECT slug, hook_name, kind, n_units, band_basis FROM sources WHERE slug LIKE '%-rand%' ORDER BY slug"
    ).fetchall()
    expected = sorted(
        (slug, hook, DirectionKind.name, int(option.split("@")[0]), "all") for option, slug, hook in DIRECTIONS
    )
    assert rows == expected


def test_directions_are_the_seeded_unit_gaussians(reference, tiny_model_dir):
    """Normalised draws from one generator seeded with --seed, in option order; another
    seed gives other directions."""
    import torch

    _, stored, model = reference
    generator = torch.Generator().manual_seed(SEED)
    for option, slug, hook in DIRECTIONS:
        n = int(option.split("@")[0])
        width = stored[slug].shape[1]
        draws = torch.randn((n, width), generator=generator, dtype=torch.float32).double().numpy()
        expected = draws / np.linalg.norm(draws, axis=1, keepdims=True)
        np.testing.assert_allclose(stored[slug], expected, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(stored[slug], axis=1), 1.0, atol=1e-6)
    widths = {slug: stored[slug].shape[1] for _, slug, _ in DIRECTIONS}
    cfg = model.cfg
    assert widths == {
        "1-mlp-rand": cfg.d_mlp,
        "0-res-pre-rand": cfg.d_model,
        "0-att-rand": cfg.n_heads * cfg.d_head,
        "1-mlp-pre-rand": cfg.d_mlp,
        "1-mlp-rand-2": cfg.d_mlp,
    }
    assert not np.allclose(stored["1-mlp-rand"][:2], stored["1-mlp-rand-2"])


@pytest.mark.parametrize("slug", [slug for _, slug, _ in DIRECTIONS])
def test_statistics_and_exact_top_k(con, reference, slug):
    k = TINY_INDEX_OPTIONS["top_k"]
    before, after = TINY_INDEX_OPTIONS["window"]
    acts = reference[0][slug]
    ctx = acts.shape[1]
    stats = con.execute(
        "SELECT unit, max, min, mean, std, density, n_tokens, n_fired, hist_counts, cos_in_out "
        "FROM unit_stats WHERE source = ? ORDER BY unit",
        [slug],
    ).fetchall()
    assert len(stats) == acts.shape[-1]
    for unit, mx, mn, mean, std, density, n_tokens, n_fired, counts, cos in stats:
        values = acts[:, 1:, unit].reshape(-1)  # BOS never counts
        assert n_tokens == values.size and sum(counts) == n_tokens
        assert (mx, mn) == (pytest.approx(values.max(), abs=ATOL), pytest.approx(values.min(), abs=ATOL))
        assert mean == pytest.approx(values.mean(), abs=ATOL)
        assert std == pytest.approx(values.std(), abs=ATOL)
        assert n_fired == int((values > 0).sum()) and density == pytest.approx((values > 0).mean())
        assert 0 < n_fired < n_tokens  # a projection is positive and negative: dense, both signs
        assert cos is None
        examples = con.execute(
            "SELECT rank, seq, pos, act, start, acts FROM examples "
            "WHERE source = ? AND unit = ? AND band IS NULL ORDER BY rank",
            [slug, unit],
        ).fetchall()
        np.testing.assert_allclose([e[3] for e in examples], np.sort(values)[::-1][:k], atol=ATOL)
        for _, seq, pos, act, start, window in examples:
            assert pos >= 1 and act == pytest.approx(acts[seq, pos, unit], abs=ATOL)
            assert start == max(0, pos - before) and start + len(window) == min(ctx, pos + after + 1)
            np.testing.assert_allclose(window, acts[seq, start : start + len(window), unit], atol=ATOL)
        bands = con.execute("SELECT count FROM bands WHERE source = ? AND unit = ?", [slug, unit]).fetchall()
        assert sum(c for (c,) in bands) == n_tokens  # bands over all tokens


def test_logit_table_follows_the_direction_into_the_residual_stream(con, reference):
    """resid_pre: d @ W_U; mlp.hook_post: d @ W_out @ W_U; attn.hook_z: d through W_O;
    hook_pre (a nonlinearity before the output): no logit table."""
    _, stored, model = reference
    w_u = model.W_U.detach().double().numpy()
    w_out = model.blocks[1].mlp.W_out.detach().double().numpy()
    w_o = model.blocks[0].attn.W_O.detach().double().numpy()
    writes = {
        "0-res-pre-rand": stored["0-res-pre-rand"],
        "1-mlp-rand": stored["1-mlp-rand"] @ w_out,
        "0-att-rand": stored["0-att-rand"] @ w_o.reshape(-1, w_o.shape[-1]),
    }
    for slug, write in writes.items():
        effect = write @ w_u
        rows = con.execute(
            "SELECT unit, top_ids, top_values, bottom_values FROM logits WHERE source = ? ORDER BY unit", [slug]
        ).fetchall()
        assert len(rows) == len(effect)
        for unit, top_ids, top_values, bottom_values in rows:
            np.testing.assert_allclose(top_values, np.sort(effect[unit])[::-1][:10], atol=1e-4)
            np.testing.assert_allclose(effect[unit][top_ids], top_values, atol=1e-4)
            np.testing.assert_allclose(bottom_values, np.sort(effect[unit])[:10], atol=1e-4)
    assert con.execute("SELECT count(*) FROM logits WHERE source = '1-mlp-pre-rand'").fetchone()[0] == 0


def test_live_inference_projects_onto_the_stored_directions(index, reference):
    """The app's live model reloads exactly the stored vectors (another draw would differ)."""
    import torch

    from actscope.app.live import load_live
    from actscope.indexer.store.reader import Store

    store = Store(index)
    try:
        info = store.models()[0]
        sources = [s for s in store.sources(info.model) if s.slug in ("1-mlp-rand", "0-att-rand")]
        live = load_live(
            dict(info.row),
            [dict(s.row) for s in sources],
            unit_vectors=lambda slug: store.unit_vectors(info.model, slug),
        )
    finally:
        store.close()
    ids, _ = live.tokenize("def f(x):\n    return x + 1")
    with torch.no_grad():
        _, cache = live.loaded.model.run_with_cache(torch.tensor([ids]))
    for slug, hook in (("1-mlp-rand", "blocks.1.mlp.hook_post"), ("0-att-rand", "blocks.0.attn.hook_z")):
        expected = cache[hook][0].reshape(len(ids), -1).double().numpy() @ reference[1][slug].T
        np.testing.assert_allclose(live.activations(ids, slug), expected, atol=1e-5)


def test_a_direction_source_without_stored_vectors_is_a_clear_error(index):
    from actscope.indexer import kinds
    from actscope.indexer.errors import ActscopeError
    from actscope.indexer.store.reader import Store

    store = Store(index)
    try:
        row = dict(store.source(store.models()[0].model, "1-mlp-rand").row)
    finally:
        store.close()
    with pytest.raises(ActscopeError, match="holds no directions"):
        kinds.reload_source(row, "cpu")
