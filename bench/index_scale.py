"""Indexing at scale: random models of about 6k, 100k and 400k units, against their floor.

For each case it builds (once, kept under --work) a random GPT-2-style model and random
TopK SAEs, then runs, each in a fresh process and one after the other: the floor (the
bare forward pass plus every SAE's encode, through the runner the indexer uses, on the
same batches), `actscope index`, and the floor again. It prints total time / floor (the
mean of the floors around the run), where the time outside the batches went (from the
run's own log of its phases), peak RSS and the index file's bytes per unit.

Cases (units = neurons + SAE features):
  6k    2 layers x 1,024 neurons + a 4,096-feature SAE on layer 1          6,144 units
  100k  12 layers x 3,072 neurons + a 65,536-feature SAE on layer 6        102,400 units
  400k  12 layers x 3,072 neurons + 6 SAEs of 65,536 features (layers 1, 3 .. 11)
        430,080 units, in groups under --max-state-gb 2: one pass per group (its vocabulary
        is 8,192 tokens, not 32,768: its logit tables are then as costly as the 100k case's)

"After the last batch" is the run's wall time less its load, calibration and batches
(in groups: the unit tables written after each group's pass are in it too).

First it indexes a tiny model (the warm-up): the first index after an install compiles
the indexer's numba kernels into numba's cache, tens of seconds that every later run is
spared; the cases measure the runs after it.

Usage:
  .venv/bin/python bench/index_scale.py [--cases 6k,100k,400k] [--tokens 6k=262144,100k=262144,400k=16384]
      [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CTX, BATCH = 128, 32


@dataclass
class Case:
    name: str
    n_layers: int
    d_mlp: int
    sae_layers: tuple[int, ...]
    d_sae: int
    vocab: int
    tokens: int
    max_state_gb: float | None = None

    @property
    def units(self) -> int:
        return self.n_layers * self.d_mlp + len(self.sae_layers) * self.d_sae


CASES = {
    "6k": Case("6k", 2, 1024, (1,), 4096, 8192, 262144),
    "100k": Case("100k", 12, 3072, (6,), 65536, 32768, 262144),
    "400k": Case("400k", 12, 3072, (1, 3, 5, 7, 9, 11), 65536, 8192, 16384, max_state_gb=2.0),
}
D_MODEL, SAE_K = 256, 32
# A tiny model with the same kinds of sources, indexed once before the cases: the first
# index after an install compiles the numba kernels (kept in numba's cache), a cost of
# the install, not of the run measured.
WARM_UP = Case("warm-up", 1, 64, (0,), 256, 1024, 4096)


def build(case: Case, work: Path) -> tuple[str, list[str]]:
    """(model dir, SAE dirs) of the case's random model, built under `work` unless there."""
    root = work / case.name
    model_dir = root / "model"
    sae_dirs = [root / f"sae-{layer}" for layer in case.sae_layers]
    if (root / "done").exists():
        return str(model_dir), [str(d) for d in sae_dirs]
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from tokenizers import ByteLevelBPETokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from actscope.indexer.corpus.builtin import iter_documents
    from actscope.indexer.model.loading import save_native

    root.mkdir(parents=True, exist_ok=True)
    docs = [doc for _, doc in zip(range(2000), iter_documents("stdlib"))]
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(docs, vocab_size=case.vocab, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.save(str(root / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=case.n_layers,
        d_model=D_MODEL,
        d_head=32,
        n_heads=8,
        d_mlp=case.d_mlp,
        n_ctx=256,
        d_vocab=case.vocab,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    save_native(
        HookedTransformer(cfg),
        root / "tokenizer.json",
        model_dir,
        f"rand-{case.name}",
        "<|endoftext|>",
        "<|endoftext|>",
    )
    for layer, sae_dir in zip(case.sae_layers, sae_dirs):
        hook = f"blocks.{layer}.hook_resid_post"
        cfg_sae = TopKSAEConfig(d_in=D_MODEL, d_sae=case.d_sae, k=SAE_K, metadata=SAEMetadata(hook_name=hook))
        TopKSAE(cfg_sae).save_model(str(sae_dir))
    (root / "done").write_text("")
    return str(model_dir), [str(d) for d in sae_dirs]


def floor(model: str, saes: list[str], max_tokens: int) -> dict:
    """The bare forward pass plus every SAE's encode on the run's batches (in this process)."""
    import torch

    from actscope.indexer.corpus.batches import iter_batches
    from actscope.indexer.corpus.documents import iter_documents
    from actscope.indexer.kinds import SourceRequest, build_sources
    from actscope.indexer.memory import keep_freed_memory
    from actscope.indexer.model.loading import load_model, resolve_model_spec
    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.model.saes import load_sae, resolve_sae_spec, sae_processing

    keep_freed_memory()
    specs = [resolve_sae_spec(s) for s in saes]
    loaded_saes = [load_sae(spec, "cpu") for spec in specs]
    model_spec = resolve_model_spec(model)
    model_spec.processing = sae_processing(loaded_saes)
    loaded = load_model(model_spec, "cpu")
    sources = build_sources(loaded.model, SourceRequest(saes=list(zip(specs, loaded_saes))))
    runner = ActivationRunner(loaded.model, sources, reuse_outputs=True)
    stream = iter_batches(
        iter_documents("stdlib"),
        loaded.tokenizer,
        bos_token_id=loaded.bos_token_id,
        eos_token_id=loaded.eos_token_id,
        ctx=CTX,
        batch_size=BATCH,
        max_sequences=max_tokens // CTX,
    )
    batches = [batch.tokens for batch in stream]  # tokenised before the clock starts
    start = time.perf_counter()
    with torch.inference_mode():
        for tokens in batches:
            runner(tokens)
    return {"seconds": time.perf_counter() - start}


def index(model: str, saes: list[str], max_tokens: int, out: str, max_state_gb: float | None) -> dict:
    """`actscope index` on the case (in this process); its phases from the file's meta."""
    import duckdb

    from actscope.indexer.config import IndexConfig
    from actscope.indexer.run import run_index

    Path(out).unlink(missing_ok=True)
    start = time.perf_counter()
    config = IndexConfig(
        model=model,
        dataset="stdlib",
        out=out,
        saes=saes,
        max_tokens=max_tokens,
        ctx=CTX,
        batch_size=BATCH,
        device="cpu",
        quiet=True,
        max_state_gb=max_state_gb,
    )
    run_index(config)
    seconds = time.perf_counter() - start
    con = duckdb.connect(out, read_only=True)
    try:
        phases = json.loads(con.execute("SELECT value FROM meta WHERE key = 'phase_seconds'").fetchone()[0])
    finally:
        con.close()
    return {"seconds": seconds, "phases": phases, "bytes": os.path.getsize(out)}


def in_child(kind: str, case: Case, work: Path, out: str, tokens: int) -> dict:
    """Run `kind` in a fresh process; its result with the child's peak RSS."""
    command = [sys.executable, __file__, "--worker", kind, "--cases", case.name, "--work", str(work)]
    command += ["--out", out, "--tokens", f"{case.name}={tokens}"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    output = process.stdout.read() if process.stdout else ""
    if status != 0:
        raise SystemExit(f"{kind} of {case.name} failed (status {status})")
    result = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_mb"] = usage.ru_maxrss / 1024
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="6k,100k,400k")
    parser.add_argument("--tokens", default="", help="NAME=TOKENS,... (default: each case's own)")
    parser.add_argument("--work", default="/tmp/actscope-index-scale", help="where the models are kept")
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=["floor", "index"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work)
    tokens = {name: int(n) for name, n in (item.split("=") for item in args.tokens.split(",") if item)}
    cases = [{**CASES, WARM_UP.name: WARM_UP}[name] for name in args.cases.split(",")]
    if args.worker:
        case = cases[0]
        model, saes = build(case, work)
        n = tokens.get(case.name, case.tokens)
        result = floor(model, saes, n) if args.worker == "floor" else index(model, saes, n, args.out, case.max_state_gb)
        print(json.dumps(result))
        return
    build(WARM_UP, work)
    warm = in_child("index", WARM_UP, work, str(work / WARM_UP.name / "index.duckdb"), WARM_UP.tokens)
    print(f"warm-up: a {WARM_UP.units:,}-unit index, the kernels compiled if not cached: {warm['seconds']:.1f} s")
    for case in cases:
        build(case, work)
        n = tokens.get(case.name, case.tokens)
        out = str(work / case.name / "index.duckdb")
        load = os.getloadavg()[0]
        print(f"{case.name}: floor, index, floor ({time.strftime('%H:%M:%S')})", file=sys.stderr)
        before = in_child("floor", case, work, out, n)
        run = in_child("index", case, work, out, n)
        after = in_child("floor", case, work, out, n)
        floor_s = (before["seconds"] + after["seconds"]) / 2
        phases = run["phases"]
        print(
            f"\n{case.name}: {case.units:,} units, {n:,} tokens (load average {load:.1f} at start, {os.getloadavg()[0]:.1f} at end)"
        )
        print(f"  floor {before['seconds']:.1f} s / {after['seconds']:.1f} s, index {run['seconds']:.1f} s")
        print(f"  total / floor: {run['seconds'] / floor_s:.3f}")
        streamed = sum(phases.get(name, 0.0) for name in ("load", "open file", "calibration", "batches"))
        print(f"  after the last batch: {run['seconds'] - streamed:.1f} s")
        print(f"  phases: {', '.join(f'{k} {v:.1f} s' for k, v in phases.items())}")
        print(f"  peak RSS: index {run['peak_rss_mb']:,.0f} MB, floor {before['peak_rss_mb']:,.0f} MB")
        print(f"  file: {run['bytes'] / 1e6:,.1f} MB, {run['bytes'] / case.units:,.0f} bytes per unit")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
