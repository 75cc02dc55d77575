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
def tiny_model(tiny_model_dir):
    from actscope.indexer.model.loading import load_model, resolve_model_spec

    return load_model(resolve_model_spec(str(tiny_model_dir)), "cpu").model


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
def reference(con, tiny_model, tiny_sae_dir):
    import torch
    from sae_lens import SAE

    model = tiny_model
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


# -- the app: links between twins, live inference ------------------------------------
@pytest.fixture(scope="module")
def dla_client(dla_index):
    from fixtures_web import make_client

    with make_client(dla_index) as client:
        yield client


@pytest.mark.parametrize(
    ("source", "twin", "mine", "theirs"),
    [
        ("1-res-sae", "1-res-sae-dla", "activation", "direct effect on the next token"),
        ("1-res-sae-dla", "1-res-sae", "direct effect on the next token", "activation"),
    ],
)
def test_a_unit_page_links_to_its_twin_both_ways(dla_client, source, twin, mine, theirs):
    from bs4 import BeautifulSoup

    data = dla_client.get(f"/api/tiny/{source}/3").json()
    assert data["examples_by"] == mine
    assert data["twin"] == {"source": twin, "examples_by": theirs, "url": f"/tiny/{twin}/3"}
    page = BeautifulSoup(dla_client.get(f"/tiny/{source}/3?text=a%20b").text, "html.parser")
    link = page.select_one("#twin-link")
    assert link["href"] == f"/tiny/{twin}/3?text=a+b"  # the visitor's text still applies
    assert link.get_text() == f"top examples by {theirs}"
    assert page.select_one("#twin").get_text().startswith(f"Top examples by {mine}")


def test_a_source_without_a_twin_has_none(client):
    data = client.get("/api/tiny/1-res-sae/3").json()
    assert data["twin"] is None and data["examples_by"] == "activation"


def test_live_direct_effect_matches_the_reference_and_leaves_the_last_token_unmeasured(dla_client, tiny_model):
    import torch
    from bs4 import BeautifulSoup

    text = "def f(x):\n    return x + 1"
    data = dla_client.get("/api/tiny/1-mlp-dla/5", params={"text": text}).json()["live"]
    model = tiny_model
    tokens = torch.tensor([data["token_ids"]])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        expected = direct_effects(model, cache, tokens, cache["blocks.1.mlp.hook_post"], model.blocks[1].mlp.W_out)
    acts = data["acts"]
    assert len(acts) > 5 and acts[-1] is None
    np.testing.assert_allclose(acts[:-1], expected[0, :-1, 5], atol=1e-5)
    page = BeautifulSoup(dla_client.get("/tiny/1-mlp-dla/5", params={"text": text}).text, "html.parser")
    spans = page.select("#live-result .live-tokens .t")
    assert len(spans) == len(acts)
    assert "unmeasured" in spans[-1]["class"] and spans[-1]["title"].endswith(": not measured")
    assert float(spans[1]["data-act"]) == pytest.approx(acts[1], abs=1e-4)
    assert "not measured" in page.select_one("#live-result .unmeasured-note").get_text()


def _build(model, dla=True, **request):
    from actscope.indexer import kinds

    return kinds.build_sources(model, kinds.SourceRequest(dla=dla, **request))


def test_dla_is_refused_for_neurons_without_an_output_direction(tiny_model):
    from actscope.indexer.errors import ActscopeError

    model = tiny_model
    with pytest.raises(
        ActscopeError, match=r"--dla: source 0-mlp-pre \(blocks\.0\.mlp\.hook_pre\) writes no direction"
    ):
        _build(model, neuron_hooks=["blocks.0.mlp.hook_post", "blocks.0.mlp.hook_pre"])
    slugs = [s.slug for s in _build(model, neuron_hooks=["blocks.0.mlp.hook_pre"], dla=False)]
    assert slugs == ["0-mlp-pre"]


def _sae(cls, cfg_cls, hook, d_in, seed, **extra):
    import torch
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(seed)
    hook_out = extra.pop("hook_name_out", None)
    metadata = SAEMetadata(hook_name=hook, hook_name_out=hook_out) if hook_out else SAEMetadata(hook_name=hook)
    sae = cls(cfg_cls(d_in=d_in, d_sae=24, metadata=metadata, **extra))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.4)
        sae.b_enc.fill_(-0.3)
        sae.W_dec.normal_(0, 0.3)
    return sae


@pytest.mark.parametrize("where", ["transcoder", "skip-transcoder", "mlp-post-sae", "hook-z-sae"])
def test_transcoders_and_sae_decoders_write_through_the_output_hook(tiny_model, where):
    """The twin of a transcoder (decoding into blocks.0.hook_mlp_out), and of SAEs on an MLP's
    hook_post and on attn.hook_z (their decoder rows mapped through W_out and W_O), against
    apply_ln_to_stack on the contribution the decoder writes into the residual stream; the
    logit table from the same direction."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.transcoder import SkipTranscoder, SkipTranscoderConfig, Transcoder, TranscoderConfig

    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.weights import logit_table

    model = tiny_model
    block = model.blocks[0]
    if where.endswith("transcoder"):
        cls, cfg_cls = (
            (Transcoder, TranscoderConfig) if where == "transcoder" else (SkipTranscoder, SkipTranscoderConfig)
        )
        sae = _sae(
            cls,
            cfg_cls,
            "blocks.0.hook_resid_mid",
            32,
            4,
            d_out=32,
            apply_b_dec_to_input=False,
            hook_name_out="blocks.0.hook_mlp_out",
        )
        written = sae.W_dec.detach()
    elif where == "mlp-post-sae":
        sae = _sae(StandardSAE, StandardSAEConfig, "blocks.0.mlp.hook_post", 64, 5)
        written = sae.W_dec.detach() @ block.mlp.W_out
    else:
        sae = _sae(StandardSAE, StandardSAEConfig, "blocks.0.attn.hook_z", 32, 6)
        written = torch.einsum("fhd,hdm->fm", sae.W_dec.detach().reshape(24, 4, 8), block.attn.W_O)
    base, twin = _build(model, no_neurons=True, saes=[({"kind": "path", "path": "-"}, sae)])
    assert twin.slug == base.slug + "-dla" and twin.hook_name == sae.cfg.metadata.hook_name
    tokens = torch.tensor([[0, 5, 17, 42, 99, 7, 3, 250]])
    got = ActivationRunner(model, [base, twin])(tokens)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
        hook_act = cache[sae.cfg.metadata.hook_name]
        features = sae.encode(hook_act.reshape(1, 8, -1) if where == "hook-z-sae" else hook_act)
        expected = direct_effects(model, cache, tokens, features, written)
    assert bool(torch.isnan(got[twin.slug][0, -1]).all())
    np.testing.assert_allclose(got[twin.slug][0, :-1].numpy(), expected[0, :-1], atol=1e-5)
    assert float(features[0, 1:-1].abs().sum()) > 0  # the features fire: the comparison means something
    table = logit_table(model, base)
    effect = written @ model.W_U
    np.testing.assert_allclose(table.top_values.numpy(), effect.topk(10, dim=1).values.numpy(), atol=1e-5)


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("sparse", [False, True])
def test_accumulators_leave_the_tail_out(sparse, fused):
    """With tail 1 the last position of every sequence is never counted, binned, sampled or
    a top example, on the compiled and the tensor path, dense and sparse (a huge value
    there, or NaN, would show); the state equals a brute force over positions 1 .. P-2."""
    import torch

    from actscope.indexer.accumulate.calibrate import _dense_grid, _sparse_grid
    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.sampling import token_keys
    from actscope.indexer.accumulate.sparse import SparseAccumulator
    from actscope.indexer.kinds.dla import DlaKind
    from actscope.indexer.kinds.sae import SaeKind

    generator = torch.Generator().manual_seed(5)
    n_seq, n_pos, n_units = 4, 12, 6
    acts = torch.randn(n_seq, n_pos, n_units, generator=generator)
    if sparse:
        acts = acts.relu()
        body = acts[:, 1:-1].reshape(-1, n_units)
        rows, units = (body > 0).nonzero(as_tuple=True)
        grid = _sparse_grid([(units, body[rows, units])], n_units, 16, 0, SaeKind.band_levels)
    else:
        grid = _dense_grid(acts[:, :-1], n_units, 16, 0, DlaKind.band_levels)
    acts[:, -1] = 1e6 if sparse else float("nan")
    keys = token_keys(torch.arange(n_seq * n_pos).view(n_seq, n_pos), 0)
    accumulator = (SparseAccumulator if sparse else DenseAccumulator)(
        n_units, grid, top_k=3, band_size=2, window=(2, 2), device="cpu", fused=fused, tail=1
    )
    for half in (0, 2):
        accumulator.update(acts[half : half + 2].contiguous(), half, keys[half : half + 2].contiguous())
    values = acts[:, 1:-1].reshape(-1, n_units).double()
    stats = accumulator.stats
    assert stats.n_tokens == n_seq * (n_pos - 2)
    kept = values.clamp(min=0) if sparse else values
    torch.testing.assert_close(stats.sum, kept.sum(0), rtol=1e-6, atol=1e-6)
    assert torch.equal(stats.max.double(), values.max(0).values)
    expected_binned = (values > 0).sum(0) if sparse else torch.full((n_units,), n_seq * (n_pos - 2))
    assert torch.equal(stats.hist.sum(1), expected_binned)
    top = accumulator.top.token
    assert bool((top[top >= 0] % n_pos < n_pos - 1).all())
    expected_top = values.topk(3, dim=0).values.T.float()
    torch.testing.assert_close(accumulator.top.payload["act"], expected_top)
    samples = accumulator.samples.token
    assert (samples >= 0).sum() > 0 and bool((samples[samples >= 0] % n_pos < n_pos - 1).all())


def test_try_page_with_twins_shows_the_last_token_unmeasured(dla_client):
    """The try page lists every non-control source per token; a twin has none on the last."""
    from bs4 import BeautifulSoup

    text = "def f(x):\n    return x + 1"
    api = dla_client.get("/api/tiny/try", params={"text": text}).json()
    n = len(api["tokens"])
    twins = [s for s in api["sources"] if s["source"].endswith("-dla")]
    assert twins and all(s["top"][n - 1] == [] and s["top"][1] for s in twins)
    page = dla_client.get("/tiny/try", params={"text": text, "pos": n - 1})
    assert page.status_code == 200
    soup = BeautifulSoup(page.text, "html.parser")
    last = soup.select(".try-tokens a.t")[n - 1]
    assert f"{twins[0]['source']} not measured" in last["data-units"]
    column = soup.select_one(f'.try-source[data-source="{twins[0]["source"]}"]')
    assert "Not measured on this token" in column.get_text() and not column.select("li")
    sources = [s.slug for s in dla_client.app.state.catalog.store("tiny").sources("tiny")]
    assert sources.index("1-mlp") < sources.index("1-mlp-dla")  # a twin after its source
