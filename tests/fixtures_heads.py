"""Indexes of attention-head metrics: the tiny model's heads, and a tiny grouped-query
attention (GQA) model's, every metric of `--heads`, no neurons."""

from __future__ import annotations

from pathlib import Path

import pytest

from fixtures_models import TINY_INDEX_OPTIONS

HEAD_METRICS = ["max-attn", "entropy", "result-norm", "value-norm", "value-weighted-attn", "prev-token", "induction"]


def _heads_index(tmp_path_factory, name: str, model_dir: Path, corpus_dir: Path) -> Path:
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("index") / f"{name}.duckdb"
    run_index(
        IndexConfig(
            model=str(model_dir),
            dataset=str(corpus_dir),
            out=str(out),
            no_neurons=True,
            heads=HEAD_METRICS,
            **TINY_INDEX_OPTIONS,
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_heads_index(tmp_path_factory, tiny_model_dir, tiny_corpus_dir) -> Path:
    """The tiny model's heads: sources {0,1}-attn-{metric}, 4 heads each."""
    return _heads_index(tmp_path_factory, "tiny-heads", tiny_model_dir, tiny_corpus_dir)


@pytest.fixture(scope="session")
def tiny_gqa_model_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """A 2-layer model with grouped-query attention (4 query heads, 2 key/value groups)
    and rotary positions, on the tiny model's tokenizer."""
    import json

    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from actscope.indexer.model.loading import NATIVE_CONFIG, NATIVE_TOKENIZER, save_native

    meta = json.loads((tiny_model_dir / NATIVE_CONFIG).read_text())
    torch.manual_seed(3)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        n_key_value_heads=2,
        d_mlp=64,
        n_ctx=64,
        d_vocab=meta["config"]["d_vocab"],
        act_fn="silu",
        normalization_type="RMS",
        positional_embedding_type="rotary",
        seed=3,
    )
    model = HookedTransformer(cfg)
    out = tmp_path_factory.mktemp("models") / "tiny-gqa"
    return save_native(model, tiny_model_dir / NATIVE_TOKENIZER, out, "tiny-gqa", meta["bos_token"], meta["eos_token"])


@pytest.fixture(scope="session")
def tiny_gqa_heads_index(tmp_path_factory, tiny_gqa_model_dir, tiny_corpus_dir) -> Path:
    return _heads_index(tmp_path_factory, "tiny-gqa-heads", tiny_gqa_model_dir, tiny_corpus_dir)
