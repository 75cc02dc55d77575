"""The index against a brute-force reference computed directly with TransformerLens.

The reference runs the full model (no stop_at_layer, no streaming) on the exact token
ids stored in the index and recomputes every statistic with plain numpy. Every test runs
on two indexes: one with a standard (ReLU) SAE and one with a TopK SAE, whose features
the indexer reads from the encode's top-k instead of the dense activations.
"""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fixtures_models import HOSTILE_DOC, TINY_CTX, TINY_INDEX_OPTIONS

ATOL = 1e-5


@pytest.fixture(scope="module", params=["standard-sae", "topk-sae"])
def indexed(request) -> tuple[Path, Path]:
    """(index, SAE directory) of one of the two tiny indexes."""
    if request.param == "standard-sae":
        return request.getfixturevalue("tiny_index"), request.getfixturevalue("tiny_sae_dir")
    return request.getfixturevalue("tiny_topk_index"), request.getfixturevalue("tiny_topk_sae_dir")


@pytest.fixture(scope="module")
def con(indexed):
    connection = duckdb.connect(str(indexed[0]), read_only=True)
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def reference(con, tiny_model_dir, indexed):
    """{slug: activations [n_seq, ctx, n_units]} from a plain full forward pass."""
    import torch
    from sae_lens import SAE

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    loaded = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu")
    sae = SAE.load_from_disk(str(indexed[1]))
    rows = con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()
    tokens = torch.tensor([r[0] for r in rows])
    with torch.no_grad():
        _, cache = loaded.model.run_with_cache(tokens)
        return (
            {
                "0-mlp": cache["blocks.0.mlp.hook_post"].numpy(),
                "1-mlp": cache["blocks.1.mlp.hook_post"].numpy(),
                "1-res-sae": sae.encode(cache["blocks.1.hook_resid_post"]).numpy(),
            },
            tokens.numpy(),
            loaded,
        )


SOURCES = ["0-mlp", "1-mlp", "1-res-sae"]


def _unit_values(reference, slug, unit):
    acts = reference[0][slug][:, 1:, unit]  # BOS excluded
    return acts.reshape(-1).astype(np.float64)


def _right_closed_counts(values, edges):
    """Counts of values in (e_i, e_i+1], the first bin closed on both sides."""
    edges = np.asarray(edges)
    bins = np.searchsorted(edges, values, side="left") - 1
    bins[values == edges[0]] = 0
    assert (bins >= 0).all() and (bins < len(edges) - 1).all()
    return np.bincount(bins, minlength=len(edges) - 1).tolist()


def test_sequences_are_the_packed_corpus(con, reference, tiny_corpus_dir):
    """Every row is BOS + ctx-1 tokens of the documents joined by EOS, in file order."""
    _, tokens, loaded = reference
    tok = loaded.tokenizer
    stream = []
    for path in sorted(Path(tiny_corpus_dir).iterdir()):
        stream += tok(path.read_text(), add_special_tokens=False)["input_ids"] + [loaded.eos_token_id]
    n_seq = TINY_INDEX_OPTIONS["max_tokens"] // TINY_CTX
    assert tokens.shape == (n_seq, TINY_CTX)
    expected = np.array(stream[: n_seq * (TINY_CTX - 1)]).reshape(n_seq, TINY_CTX - 1)
    assert (tokens[:, 0] == loaded.bos_token_id).all()
    np.testing.assert_array_equal(tokens[:, 1:], expected)
    model_row = con.execute("SELECT n_sequences, n_tokens, ctx FROM models").fetchone()
    assert model_row == (n_seq, n_seq * (TINY_CTX - 1), TINY_CTX)


@pytest.mark.parametrize("slug", SOURCES)
def test_statistics(con, reference, slug):
    rows = con.execute(
        "SELECT unit, max, min, mean, std, density, n_tokens, n_fired, hist_edges, hist_counts "
        "FROM unit_stats WHERE source = ? ORDER BY unit",
        [slug],
    ).fetchall()
    assert len(rows) == reference[0][slug].shape[-1]
    for unit, mx, mn, mean, std, density, n_tokens, n_fired, edges, counts in rows:
        values = _unit_values(reference, slug, unit)
        assert n_tokens == values.size
        assert mx == pytest.approx(values.max(), abs=ATOL)
        assert mn == pytest.approx(values.min(), abs=ATOL)
        assert mean == pytest.approx(values.mean(), abs=ATOL)
        assert std == pytest.approx(values.std(), abs=ATOL)
        assert n_fired == int((values > 0).sum())
        assert density == pytest.approx((values > 0).mean())
        assert sum(counts) == n_tokens
        assert len(edges) == len(counts) + 1 and edges == sorted(edges)
        # Bin i holds e_i < v <= e_i+1, the first bin also v == e_0.
        if slug.endswith("sae"):
            assert edges[:2] == [0.0, 0.0] and counts[0] == int((values <= 0).sum())
            firing = values[values > 0]
            expected = [counts[0], *(_right_closed_counts(firing, edges[1:]) if firing.size else [])]
        else:
            expected = _right_closed_counts(values, edges)
        np.testing.assert_array_equal(counts, expected)


@pytest.mark.parametrize("slug", SOURCES)
def test_top_k_is_exact(con, reference, slug):
    k = TINY_INDEX_OPTIONS["top_k"]
    before, after = TINY_INDEX_OPTIONS["window"]
    acts = reference[0][slug]
    for unit in range(acts.shape[-1]):
        values = acts[:, 1:, unit]
        examples = con.execute(
            "SELECT rank, seq, pos, act, start, acts FROM examples "
            "WHERE source = ? AND unit = ? AND band IS NULL ORDER BY rank",
            [slug, unit],
        ).fetchall()
        flat = values.reshape(-1)
        eligible = flat > 0 if slug.endswith("sae") else np.ones_like(flat, dtype=bool)
        expected = np.sort(flat[eligible])[::-1][:k]
        assert [e[0] for e in examples] == list(range(len(expected)))
        np.testing.assert_allclose([e[3] for e in examples], expected, atol=ATOL)
        focus = {(e[1], e[2]) for e in examples}
        assert len(focus) == len(examples)  # distinct focus tokens
        for _, seq, pos, act, start, window in examples:
            assert pos >= 1  # never BOS
            assert act == pytest.approx(acts[seq, pos, unit], abs=ATOL)
            assert start == max(0, pos - before)
            assert start + len(window) == min(TINY_CTX, pos + after + 1)
            np.testing.assert_allclose(window, acts[seq, start : start + len(window), unit], atol=ATOL)


@pytest.mark.parametrize("slug", SOURCES)
def test_bands_counts_membership_and_samples(con, reference, slug):
    import torch

    from actscope.indexer.accumulate.sampling import token_keys

    band_size = TINY_INDEX_OPTIONS["band_size"]
    acts = reference[0][slug]
    n_seq, ctx, n_units = acts.shape
    token_ids = (np.arange(n_seq)[:, None] * ctx + np.arange(ctx)[None, :])[:, 1:].reshape(-1)
    keys = token_keys(torch.tensor(token_ids), 0).numpy()
    for unit in range(n_units):
        values = _unit_values(reference, slug, unit)
        bands = con.execute(
            "SELECT band, lo, hi, count, share FROM bands WHERE source = ? AND unit = ? ORDER BY band", [slug, unit]
        ).fetchall()
        basis = values > 0 if slug.endswith("sae") else np.ones_like(values, dtype=bool)
        assert sum(b[3] for b in bands) == int(basis.sum())
        lowest = min(b[0] for b in bands if b[3] > 0) if basis.any() else -1
        for band, lo, hi, count, share in bands:
            first = band == lowest  # the lowest non-empty band also holds its lo (the min)
            inside = basis & (values <= hi) & ((values >= lo) if first else (values > lo))
            assert count == int(inside.sum()), (slug, unit, band)
            assert share == pytest.approx(count / values.size)
            samples = con.execute(
                "SELECT seq, pos, act FROM examples WHERE source = ? AND unit = ? AND band = ? ORDER BY rank",
                [slug, unit, band],
            ).fetchall()
            assert len(samples) == min(band_size, count)
            for seq, pos, act in samples:
                assert lo <= act <= hi
            # Priority sampling: exactly the band's tokens with the smallest keys.
            chosen = np.argsort(keys[inside], kind="stable")[:band_size]
            expected = token_ids[inside][chosen]
            assert [s[0] * ctx + s[1] for s in samples] == expected.tolist()


def test_band_edges_follow_quantiles(con, reference):
    """Neuron band edges sit near the calibrated 50/75/90/95/99/99.9% quantiles."""
    levels = json.loads(json.dumps(con.execute("SELECT band_levels FROM sources WHERE slug = '0-mlp'").fetchone()[0]))
    assert levels == [0.0, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999, 1.0]
    shares = np.array(
        con.execute("SELECT band, avg(share) FROM bands WHERE source = '0-mlp' GROUP BY band ORDER BY band").fetchall()
    )
    nominal = np.diff(levels)
    # Calibrated on 600 tokens and snapped to the grid: close to nominal on average.
    np.testing.assert_allclose(shares[:, 1], nominal, atol=0.06)


@pytest.mark.parametrize("slug", SOURCES)
def test_logit_table_and_cosine(con, reference, slug, indexed):
    import torch
    from sae_lens import SAE

    model = reference[2].model
    if slug.endswith("sae"):
        directions = SAE.load_from_disk(str(indexed[1])).W_dec.detach()
    else:
        directions = model.blocks[int(slug[0])].mlp.W_out.detach()
    effect = (directions @ model.W_U.detach()).numpy()
    rows = con.execute(
        "SELECT unit, top_ids, top_values, bottom_ids, bottom_values, "
        "(SELECT cos_in_out FROM unit_stats s WHERE s.source = l.source AND s.unit = l.unit) "
        "FROM logits l WHERE source = ? ORDER BY unit",
        [slug],
    ).fetchall()
    assert len(rows) == effect.shape[0]
    for unit, top_ids, top_values, bottom_ids, bottom_values, cos in rows:
        order = np.argsort(-effect[unit], kind="stable")
        np.testing.assert_allclose(top_values, effect[unit][order[:10]], atol=1e-4)
        np.testing.assert_allclose(effect[unit][top_ids], top_values, atol=1e-4)
        np.testing.assert_allclose(bottom_values, np.sort(effect[unit])[:10], atol=1e-4)
        if slug.endswith("sae"):
            assert cos is None
        else:
            mlp = model.blocks[int(slug[0])].mlp
            w_in, w_out = mlp.W_in[:, unit], mlp.W_out[unit]
            assert cos == pytest.approx(float(torch.nn.functional.cosine_similarity(w_in, w_out, dim=0)), abs=1e-5)


def test_vocab_and_run_record(con, reference):
    _, _, loaded = reference
    vocab = dict(con.execute("SELECT token_id, token FROM vocab").fetchall())
    assert len(vocab) == loaded.model.cfg.d_vocab
    assert vocab[loaded.bos_token_id] == "<|endoftext|>"
    meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    from actscope import __version__
    from actscope.indexer.store.schema import SCHEMA_VERSION

    assert meta["schema_version"] == str(SCHEMA_VERSION)
    assert meta["package_version"] == __version__
    assert json.loads(meta["run_config"])["top_k"] == TINY_INDEX_OPTIONS["top_k"]
    assert set(meta) == {
        "schema_version",
        "package_version",
        "created_at",
        "run_config",
        "dataset",
        "corpus",
        "elapsed_seconds",
        "phase_seconds",
        "reservoir",
    }
    phases = json.loads(meta["phase_seconds"])
    assert {"load", "calibration", "accumulators", "batches", "fingerprints", "logit tables"} <= set(phases)
    # Each figure is rounded to 0.01 s: the phases' sum may pass the rounded total by half a step each.
    assert sum(phases.values()) <= json.loads(meta["elapsed_seconds"]) + 0.005 * (len(phases) + 1)
    corpus = json.loads(meta["corpus"])
    assert corpus["source"] == "local files" and corpus["name"] == Path(meta["dataset"]).name
    assert json.loads(meta["elapsed_seconds"]) > 0 and meta["created_at"].startswith("20")
    assert meta["dataset"] == json.loads(meta["run_config"])["dataset"]
    spec = json.loads(con.execute("SELECT spec FROM models").fetchone()[0])
    assert spec["kind"] == "native" and spec["slug"] == "tiny"
    sae_spec = json.loads(con.execute("SELECT spec FROM sources WHERE band_basis = 'firing'").fetchone()[0])
    assert sae_spec["kind"] == "path"


def test_hostile_document_is_stored_verbatim(con, reference):
    """The corpus text survives tokenisation exactly (the app must escape it)."""
    _, tokens, loaded = reference
    # The hostile document sorts first by file name, so it opens the first sequences.
    text = loaded.tokenizer.decode(tokens[:8, 1:].reshape(-1).tolist())
    assert text.startswith(HOSTILE_DOC)


def test_topk_index_covers_tokens_with_fewer_than_k_firing(indexed, reference):
    """The TopK fixture exercises the ReLU after the top-k: some tokens fire on fewer than k."""
    from sae_lens import SAE

    sae = SAE.load_from_disk(str(indexed[1]))
    k = getattr(sae.cfg, "k", None)
    if k is None:
        pytest.skip("standard SAE")
    firing = (reference[0]["1-res-sae"][:, 1:, :] > 0).sum(-1)
    assert firing.max() <= k and (firing < k).sum() >= 20 and firing.mean() > 1


def _fingerprints(con, slug, n):
    """{unit: float64 [n]} of the stored fingerprints of a source, zeros filled in."""
    out = {}
    for unit, slots, acts in con.execute(
        "SELECT unit, slots, acts FROM fingerprints WHERE source = ? ORDER BY unit", [slug]
    ).fetchall():
        values = np.frombuffer(acts, dtype="<f2").astype(np.float64)
        row = np.zeros(n)
        if slots is None:
            row[:] = values
        else:
            row[np.frombuffer(slots, dtype="<u2")] = values
        out[unit] = row
    return out


def test_fingerprints_are_the_activations_at_the_seeded_reservoir(con, reference, indexed):
    """The reservoir is the `reservoir` eligible positions (not BOS, not a sequence's last)
    of smallest seeded priority; each unit's fingerprint is its activation there, as a
    full TransformerLens forward gives it, in float16; SAE features store their nonzero
    values only."""
    import torch

    from actscope.indexer.accumulate.reservoir import position_priority

    acts, tokens, _ = reference
    n_seq, ctx = tokens.shape
    meta = json.loads(con.execute("SELECT value FROM meta WHERE key = 'reservoir'").fetchone()[0])
    capacity = TINY_INDEX_OPTIONS["reservoir"]
    assert meta == {"n": capacity, "capacity": capacity, "seed": 0, "tail": 1}
    seqs, positions = np.meshgrid(np.arange(n_seq), np.arange(1, ctx - 1), indexing="ij")
    ids = (seqs * ctx + positions).reshape(-1)
    priority = position_priority(torch.from_numpy(ids), 0).numpy()
    chosen = np.sort(ids[np.lexsort((ids, priority))[:capacity]])
    rows = con.execute("SELECT slot, seq, pos, token_id FROM reservoir ORDER BY slot").fetchall()
    assert [r[0] for r in rows] == list(range(capacity))
    seq, pos = chosen // ctx, chosen % ctx
    assert [(r[1], r[2]) for r in rows] == list(zip(seq.tolist(), pos.tolist()))
    assert [r[3] for r in rows] == tokens[seq, pos].tolist()
    for slug in SOURCES:
        expected = acts[slug][seq, pos, :].T  # [units, n]
        stored = _fingerprints(con, slug, capacity)
        assert sorted(stored) == list(range(expected.shape[0]))
        for unit, row in stored.items():
            np.testing.assert_array_equal(row, expected[unit].astype(np.float16).astype(np.float64), err_msg=slug)
        n_slot_lists = con.execute(
            "SELECT count(slots), sum(octet_length(acts)) FROM fingerprints WHERE source = ?", [slug]
        ).fetchone()
        if slug.endswith("sae"):  # only the nonzero values
            assert n_slot_lists == (expected.shape[0], 2 * int((expected != 0).sum()))
        else:
            assert n_slot_lists == (0, 2 * expected.size)
