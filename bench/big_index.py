"""An index of >= 100,000 units for the server benchmark, built from a random model.

12 layers x 3,072 MLP neurons (36,864) plus a 65,536-feature TopK SAE on
blocks.6.hook_resid_post: 102,400 units, a realistic count (gpt2-small has 36,864
neurons). Random weights, a byte-level BPE tokenizer trained on the Python standard
library, a few thousand tokens of that library as the corpus. Building it takes minutes
of CPU, so it is built once and kept at the path given (rebuilt only when missing), with
its model and SAE beside it in PATH-model/ for live inference.

Usage:
  .venv/bin/python bench/big_index.py PATH.duckdb [--max-tokens 4096]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

N_LAYERS, D_MODEL, D_MLP, D_SAE, SAE_K, SAE_LAYER, VOCAB = 12, 256, 3072, 65536, 32, 6, 8192


def _random_model(work: Path) -> tuple[str, str]:
    """(model dir, SAE dir) of the random model and SAE, written under `work`."""
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from tokenizers import ByteLevelBPETokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from actscope.indexer.corpus.builtin import iter_documents
    from actscope.indexer.model.loading import save_native

    docs = [doc for _, doc in zip(range(400), iter_documents("stdlib"))]
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(docs, vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.save(str(work / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=N_LAYERS,
        d_model=D_MODEL,
        d_head=32,
        n_heads=8,
        d_mlp=D_MLP,
        n_ctx=256,
        d_vocab=VOCAB,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model_dir = save_native(
        HookedTransformer(cfg), work / "tokenizer.json", work / "big-12l", "big-12l", "<|endoftext|>", "<|endoftext|>"
    )
    hook = f"blocks.{SAE_LAYER}.hook_resid_post"
    sae = TopKSAE(TopKSAEConfig(d_in=D_MODEL, d_sae=D_SAE, k=SAE_K, metadata=SAEMetadata(hook_name=hook)))
    sae.save_model(str(work / "big-sae"))
    return str(model_dir), str(work / "big-sae")


def ensure_big_index(path: str | Path, max_tokens: int = 4096) -> Path:
    """The big index at `path`: built there unless a file is already there."""
    path = Path(path).resolve()
    if path.is_file():
        return path
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    # The model and SAE stay beside the index: serving it runs them for live inference.
    work = path.with_name(path.stem + "-model")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    model_dir, sae_dir = _random_model(work)
    config = IndexConfig(
        model=model_dir,
        dataset="stdlib",
        out=str(path),
        saes=[sae_dir],
        max_tokens=max_tokens,
        ctx=128,
        batch_size=32,
        device="cpu",
        calibration_tokens=min(max_tokens, 2048),
        quiet=True,
        checkpoint_every=0,
    )
    run_index(config)
    print(f"built {path} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="Index file to build (kept if it exists)")
    ap.add_argument("--max-tokens", type=int, default=4096)
    args = ap.parse_args()
    print(ensure_big_index(args.path, args.max_tokens))


if __name__ == "__main__":
    main()
