"""A tiny random model, SAE and corpus, and a real index built from them.

Everything is built offline from a config and fixed seeds: a byte-level BPE tokenizer
trained on a few standard-library modules, a 2-layer GELU HookedTransformer, a standard
SAE and a TopK SAE on blocks.1.hook_resid_post, and indexes built by the real indexer.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import pytest

TINY_CTX = 32
CORPUS_MODULES = [
    "textwrap.py",
    "string.py",
    "bisect.py",
    "heapq.py",
    "json/decoder.py",
    "json/encoder.py",
    "colorsys.py",
    "keyword.py",
]
# A document that must come out escaped on every page.
HOSTILE_DOC = "<script>alert('actscope')</script> & <b>bold</b> \"quoted\"\n" * 3
# Features of the tiny standard SAE that never fire (its encoder bias is far below any
# pre-activation): dead units, two of them adjacent.
DEAD_FEATURES = (4, 5, 9)
TINY_INDEX_OPTIONS = dict(
    ctx=TINY_CTX,
    batch_size=8,
    max_tokens=TINY_CTX * 8 * 12,
    top_k=5,
    band_size=3,
    window=(6, 3),
    calibration_tokens=600,
    hist_bins=128,
    reservoir=1024,  # of the 2,880 eligible positions: a real draw
    quiet=True,
    device="cpu",
)


@pytest.fixture(autouse=True)
def _seeded():
    import torch

    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_corpus_dir(tmp_path_factory) -> Path:
    """Text files: standard-library modules plus one hostile HTML document."""
    root = tmp_path_factory.mktemp("corpus")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for name in CORPUS_MODULES:
        (root / (name.replace("/", "_") + ".txt")).write_text((stdlib / name).read_text())
    (root / "00_hostile.txt").write_text(HOSTILE_DOC)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_corpus_dir) -> Path:
    """An actscope-native 2-layer model named 'tiny' with random weights."""
    import torch
    from tokenizers import ByteLevelBPETokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from actscope.indexer.model.loading import save_native

    work = tmp_path_factory.mktemp("tokenizer")
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train(
        [str(p) for p in sorted(tiny_corpus_dir.iterdir())],
        vocab_size=400,
        min_frequency=2,
        special_tokens=["<|endoftext|>"],
        show_progress=False,
    )
    tokenizer_json = work / "tokenizer.json"
    tokenizer.save(str(tokenizer_json))
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=64,
        n_ctx=64,
        d_vocab=tokenizer.get_vocab_size(),
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model = HookedTransformer(cfg)
    out = tmp_path_factory.mktemp("models") / "tiny"
    return save_native(model, tokenizer_json, out, "tiny", "<|endoftext|>", "<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_sae_dir(tmp_path_factory) -> Path:
    """A SAELens standard SAE (d_in 32, 128 features) on blocks.1.hook_resid_post;
    DEAD_FEATURES never fire."""
    import torch
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(1)
    cfg = StandardSAEConfig(d_in=32, d_sae=128, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post"))
    sae = StandardSAE(cfg)
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.fill_(-1.2)  # most features silent on most tokens, as in a real SAE
        sae.b_enc[list(DEAD_FEATURES)] = -1e4  # dead: these never fire, as in a real SAE
    out = tmp_path_factory.mktemp("saes") / "tiny-res"
    sae.save_model(str(out))
    return out


@pytest.fixture(scope="session")
def tiny_topk_sae_dir(tmp_path_factory) -> Path:
    """A SAELens TopK SAE (d_in 32, 128 features, k 6) on blocks.1.hook_resid_post.

    Its encoder bias is negative, so some of a token's top 6 pre-activations are below 0:
    the ReLU after the top-k leaves fewer than k features firing there.
    """
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    torch.manual_seed(2)
    sae = TopKSAE(TopKSAEConfig(d_in=32, d_sae=128, k=6, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")))
    with torch.no_grad():
        sae.W_enc.normal_(0, 0.3)
        sae.b_enc.fill_(-1.6)
    out = tmp_path_factory.mktemp("saes") / "tiny-res-topk"
    sae.save_model(str(out))
    return out


def _build_tiny_index(tmp_path_factory, name: str, model_dir: Path, sae_dir: Path, corpus_dir: Path) -> Path:
    """A real index of the tiny model and one SAE, built with TINY_INDEX_OPTIONS."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("index") / f"{name}.duckdb"
    run_index(
        IndexConfig(
            model=str(model_dir), dataset=str(corpus_dir), out=str(out), saes=[str(sae_dir)], **TINY_INDEX_OPTIONS
        )
    )
    return out


@pytest.fixture(scope="session")
def tiny_topk_index(tmp_path_factory, tiny_model_dir, tiny_topk_sae_dir, tiny_corpus_dir) -> Path:
    """A real index of the tiny model with the TopK SAE: sources 0-mlp, 1-mlp and 1-res-sae."""
    return _build_tiny_index(tmp_path_factory, "tiny-topk", tiny_model_dir, tiny_topk_sae_dir, tiny_corpus_dir)


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny_model_dir, tiny_sae_dir, tiny_corpus_dir) -> Path:
    """A real index of the tiny model: sources 0-mlp, 1-mlp and 1-res-sae."""
    return _build_tiny_index(tmp_path_factory, "tiny", tiny_model_dir, tiny_sae_dir, tiny_corpus_dir)


# A SoLU model's MLP neurons at all three of their hooks, and random directions as a control.
SOLU_NEURON_HOOKS = [
    "blocks.1.mlp.hook_pre",
    "blocks.1.mlp.hook_mid",
    "blocks.1.mlp.hook_post",
    "blocks.0.mlp.hook_post",
]
SOLU_DIRECTIONS = ["8@blocks.1.hook_resid_pre"]


@pytest.fixture(scope="session")
def tiny_solu_dir(tmp_path_factory, tiny_model_dir) -> Path:
    """An actscope-native 2-layer SoLU model named 'solu-tiny' (act_fn solu_ln: its MLPs
    have hook_pre, hook_mid and hook_post), with the tiny model's tokenizer."""
    import torch
    from tokenizers import Tokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from actscope.indexer.model.loading import save_native

    tokenizer_json = tiny_model_dir / "tokenizer.json"
    torch.manual_seed(4)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=32,
        d_head=8,
        n_heads=4,
        d_mlp=48,
        n_ctx=64,
        d_vocab=Tokenizer.from_file(str(tokenizer_json)).get_vocab_size(),
        act_fn="solu_ln",
        normalization_type="LN",
        seed=4,
    )
    out = tmp_path_factory.mktemp("models") / "solu-tiny"
    return save_native(HookedTransformer(cfg), tokenizer_json, out, "solu-tiny", "<|endoftext|>", "<|endoftext|>")


@pytest.fixture(scope="session")
def tiny_solu_index(tmp_path_factory, tiny_solu_dir, tiny_corpus_dir) -> Path:
    """A real index of the SoLU model: 0-mlp, 1-mlp-pre, 1-mlp-mid, 1-mlp and 1-res-pre-rand."""
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    out = tmp_path_factory.mktemp("index") / "solu-tiny.duckdb"
    run_index(
        IndexConfig(
            model=str(tiny_solu_dir),
            dataset=str(tiny_corpus_dir),
            out=str(out),
            neuron_hooks=SOLU_NEURON_HOOKS,
            directions=SOLU_DIRECTIONS,
            **TINY_INDEX_OPTIONS,
        )
    )
    return out
