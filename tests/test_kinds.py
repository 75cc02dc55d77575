"""The unit-kind registry: every kind is one object, nothing outside the registry asks
for a kind's name, and a new kind of SAE (a transcoder) indexes through it unchanged."""

from __future__ import annotations

import re
from pathlib import Path

import duckdb
import numpy as np
import pytest

from fixtures_models import TINY_INDEX_OPTIONS

REPO = Path(__file__).resolve().parents[1]
# A comparison with a kind's name, in Python, SQL or a template: `kind == "sae"`,
# `"neuron" != source.kind`, `kind = 'sae'`, `isinstance(acc, SparseAccumulator)`.
KIND_NAMES = r"""["'](?:neuron|sae|head|direction|dla)["']"""
BRANCH = re.compile(
    rf"""kind\w*["'\]]*\s*(?:==|!=|=|\bin\b)\s*(?:{KIND_NAMES}|\()|{KIND_NAMES}\s*(?:==|!=|=)\s*\S*kind"""
    r"""|isinstance\([^)]*(?:Sparse|Dense)Accumulator"""
)
TRANSCODER_IN, TRANSCODER_OUT = "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"


def test_nothing_outside_the_registry_branches_on_a_kind_name():
    roots = ["actscope", "indexer", "app", "templates", "static", "bench", "tests"]
    found = []
    for root in roots:
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix not in {".py", ".html", ".js"} or "vendor" in path.parts or path == Path(__file__):
                continue
            if path.is_relative_to(REPO / "indexer" / "kinds"):
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if BRANCH.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


@pytest.mark.parametrize(
    "line",
    [
        'if source.kind == "neuron":',
        "sae = load(spec) if row['kind'] == 'sae' else None",
        "WHERE s.kind = 'sae'",
        "kind = DenseAccumulator if source.kind == 'neuron' else SparseAccumulator",
        "sparse = isinstance(acc, SparseAccumulator)",
    ],
)
def test_the_branch_pattern_finds_the_old_branches(line):
    assert BRANCH.search(line)


def test_every_kind_says_what_the_indexer_and_app_need():
    from actscope.indexer import kinds
    from actscope.indexer.errors import ActscopeError

    assert list(kinds.KINDS) == ["neuron", "sae", "head", "direction", "dla"]
    for name, kind in kinds.KINDS.items():
        assert kind.name == name and kinds.get(name) is kind
        assert isinstance(kind.sparse, bool) and kind.band_basis in {"all", "firing"}
        assert isinstance(kind.control, bool) and isinstance(kind.same_unit_across_hooks, bool)
        levels = kind.band_levels
        assert levels[0] == 0.0 and levels[-1] == 1.0 and list(levels) == sorted(set(levels))
    with pytest.raises(ActscopeError, match="unknown unit kind 'lens'"):
        kinds.get("lens")


@pytest.fixture(scope="module")
def transcoder_dir(tmp_path_factory):
    """A SAELens transcoder reading blocks.0.ln2.hook_normalized and writing blocks.0.hook_mlp_out."""
    import torch
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.transcoder import Transcoder, TranscoderConfig

    torch.manual_seed(3)
    cfg = TranscoderConfig(
        d_in=32,
        d_sae=48,
        d_out=32,
        apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name=TRANSCODER_IN, hook_name_out=TRANSCODER_OUT),
    )
    transcoder = Transcoder(cfg)
    with torch.no_grad():
        transcoder.W_enc.normal_(0, 0.4)
        transcoder.b_enc.fill_(-0.8)
        transcoder.W_dec.normal_(0, 0.3)
    out = tmp_path_factory.mktemp("saes") / "transcoder"
    transcoder.save_model(str(out))
    return out


@pytest.fixture(scope="module")
def transcoder_index(tmp_path_factory, tiny_model_dir, transcoder_dir, tiny_corpus_dir):
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("index") / "transcoder.duckdb"
    run_index(
        IndexConfig(
            model=str(tiny_model_dir),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            saes=[str(transcoder_dir)],
            no_neurons=True,
            **TINY_INDEX_OPTIONS,
        )
    )
    return out


def test_a_transcoder_indexes_as_sae_features(transcoder_index, tiny_model_dir, transcoder_dir):
    """Its features against TransformerLens plus SAELens' own encode on the stored tokens,
    and its logit table from W_dec, which writes to the residual stream at its output hook."""
    import torch
    from sae_lens import SAE

    from actscope.indexer.model.loading import load_model, resolve_model_spec

    con = duckdb.connect(str(transcoder_index), read_only=True)
    try:
        ((slug, kind, hook, basis, n_units),) = con.execute(
            "SELECT slug, kind, hook_name, band_basis, n_units FROM sources"
        ).fetchall()
        tokens = torch.tensor([r[0] for r in con.execute("SELECT token_ids FROM sequences ORDER BY seq").fetchall()])
        stats = con.execute("SELECT unit, max, n_fired FROM unit_stats ORDER BY unit").fetchall()
        logits = con.execute("SELECT unit, top_ids FROM logits ORDER BY unit").fetchall()
    finally:
        con.close()
    assert (slug, kind, hook, basis, n_units) == ("0-ln2-hook-normalized-sae", "sae", TRANSCODER_IN, "firing", 48)

    loaded = load_model(resolve_model_spec(str(tiny_model_dir)), "cpu")
    transcoder = SAE.load_from_disk(str(transcoder_dir))
    with torch.no_grad():
        _, cache = loaded.model.run_with_cache(tokens)
        acts = transcoder.encode(cache[TRANSCODER_IN])[:, 1:, :].reshape(-1, 48).numpy()  # BOS is never indexed
        effect = (transcoder.W_dec @ loaded.model.W_U).numpy()
    assert sum(n for _, _, n in stats) > 100  # the features fire: the comparison means something
    for unit, top, n_fired in stats:
        assert n_fired == int((acts[:, unit] > 0).sum())
        assert top == pytest.approx(float(acts[:, unit].max(initial=0.0)), abs=1e-5)
    assert len(logits) == 48
    for unit, top_ids in logits:
        assert top_ids == np.argsort(-effect[unit], kind="stable")[:10].tolist()


def test_live_inference_reloads_a_source_through_its_kind(transcoder_index, transcoder_dir):
    import torch
    from sae_lens import SAE

    from actscope.app.live import load_live

    con = duckdb.connect(str(transcoder_index), read_only=True)
    try:
        con.execute("SELECT * FROM models")
        model_row = dict(zip([d[0] for d in con.description], con.fetchone()))
        con.execute("SELECT * FROM sources")
        source_rows = [dict(zip([d[0] for d in con.description], row)) for row in con.fetchall()]
    finally:
        con.close()
    live = load_live(model_row, source_rows)
    (source,) = live.sources.values()
    assert source.kind.name == "sae" and type(source.module).__name__ == "Transcoder"
    ids, _ = live.tokenize("def f(x):\n    return x")
    got = live.activations(ids, source.slug)
    transcoder = SAE.load_from_disk(str(transcoder_dir))
    with torch.no_grad():
        _, cache = live.loaded.model.run_with_cache(torch.tensor([ids]))
        expected = transcoder.encode(cache[TRANSCODER_IN])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
