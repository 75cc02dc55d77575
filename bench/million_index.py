"""An index of 1,048,576 units for the server benchmark, from synthetic accumulator state.

No model runs. 16 neuron sources (`0-mlp` .. `15-mlp`) of 65,536 units each get
synthetic activations on a small random corpus (64 sequences of 32 tokens over a
2,048-token vocabulary): Gaussian noise with a per-unit scale and offset, plus a bump on
the unit's preferred token, so top examples, bands and token search have structure. Each
source is calibrated (real grids), accumulated by the real DenseAccumulator (the CPU
kernels `actscope index` uses), finalized by the real `finalize.unit_rows` /
`example_rows`, and written through the real StoreWriter, one source at a time (memory
holds one source's state). Logit tables are random token ids with sorted values. Options
as `actscope index --top-k 5 --band-size 2 --window 8,4`: 19 examples of 13 activations
per unit.

About 7 minutes of CPU (41 minutes of wall time on the shared, loaded 2-core machine),
7 GB of peak memory (one source's activations, 512 MB, and their temporaries) and 2.0
GiB on disk; built once at the path given and kept (rebuilt only when missing). The model row names a model that does not exist: serve it with
ACTSCOPE_LIVE=false.

Usage:
  .venv/bin/python bench/million_index.py PATH.duckdb [--sources 16] [--units 65536]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

N_SOURCES, N_UNITS, N_SEQ, CTX, VOCAB = 16, 65536, 64, 32, 2048
TOP_K, BAND_SIZE, WINDOW, HIST_BINS, N_LOGITS = 5, 2, (8, 4), 256, 10
BATCH_SEQ = 16  # sequences per accumulator update: [16, 32, 65536] float32 is 128 MB
SEED = 0
MODEL = "synthetic-1m"


def vocabulary(n: int) -> list[str]:
    """n distinct token strings: syllable words, half with a leading space."""
    onsets, vowels, codas = "bcdfghklmnprstvz", "aeiou", ["", "n", "r", "s", "t", "l"]
    words = [o + v + c for o in onsets for v in vowels for c in codas]  # 480 words
    out: list[str] = []
    for i in range(n):
        word = words[i % len(words)] + ("" if i < 2 * len(words) else str(i // (2 * len(words))))
        out.append((" " if (i // len(words)) % 2 else "") + word)
    return out


def corpus(rng: np.random.Generator) -> np.ndarray:
    """[N_SEQ, CTX] int32 token ids, BOS (id 0) first."""
    tokens = rng.integers(1, VOCAB, size=(N_SEQ, CTX), dtype=np.int32)
    tokens[:, 0] = 0
    return tokens


def source_activations(tokens: np.ndarray, source: int, n_units: int):
    """Activations [N_SEQ, CTX, n_units] float32 of one source, as a torch tensor."""
    import torch

    gen = torch.Generator().manual_seed(1000 + source)
    scale = torch.rand(n_units, generator=gen) * 2 + 0.1
    offset = torch.randn(n_units, generator=gen) * 0.5
    preferred = torch.randint(1, VOCAB, (n_units,), generator=gen)
    t = torch.from_numpy(tokens.astype(np.int64))
    acts = torch.randn(N_SEQ, CTX, n_units, generator=gen)
    acts.mul_(scale).add_(offset)
    acts += 3.0 * scale * (t[:, :, None] == preferred[None, None, :])
    return torch.nn.functional.gelu(acts)


def accumulated(acts, n_units: int):
    """A DenseAccumulator calibrated on the first half of the corpus, fed all of it."""
    import torch

    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.grid import add_dense_bin_counts, uniform_grid, with_bands
    from actscope.indexer.accumulate.sampling import token_keys
    from actscope.indexer.kinds import get

    levels = get("neuron").band_levels
    calib = acts[: N_SEQ // 2]
    lo = calib[:, 1:, :].amin(1).amin(0)
    hi = calib[:, 1:, :].amax(1).amax(0)
    grid = uniform_grid(lo, hi, levels, HIST_BINS)
    counts = torch.zeros(n_units, grid.n_bins, dtype=torch.long)
    add_dense_bin_counts(grid, calib, counts)
    grid = with_bands(grid, counts, TOP_K)
    acc = DenseAccumulator(n_units, grid, top_k=TOP_K, band_size=BAND_SIZE, window=WINDOW, device="cpu")
    for first in range(0, N_SEQ, BATCH_SEQ):
        batch = acts[first : first + BATCH_SEQ].contiguous()
        seq_ids = first + torch.arange(batch.shape[0])
        keys = token_keys(seq_ids[:, None] * CTX + torch.arange(CTX)[None, :], SEED)
        acc.update(batch, first, keys)
    return acc


def logit_table(source: int, n_units: int):
    """Random (top_ids, top_values, bottom_ids, bottom_values) arrays [n_units, N_LOGITS]."""
    rng = np.random.default_rng(2000 + source)
    ids = rng.integers(0, VOCAB, size=(n_units, 2 * N_LOGITS), dtype=np.int32)
    values = np.sort(rng.normal(size=(n_units, 2 * N_LOGITS)).astype(np.float32), axis=1)
    return ids[:, :N_LOGITS], values[:, ::-1][:, :N_LOGITS].copy(), ids[:, N_LOGITS:], values[:, :N_LOGITS].copy()


def build(path: Path, n_sources: int = N_SOURCES, n_units: int = N_UNITS, quiet: bool = False) -> None:
    import pyarrow as pa
    import torch

    from actscope import __version__
    from actscope.indexer.accumulate.finalize import example_rows, unit_rows
    from actscope.indexer.kinds import get
    from actscope.indexer.store.writer import StoreWriter, fixed_width_lists, repeated

    neuron = get("neuron")
    rng = np.random.default_rng(SEED)
    tokens = corpus(rng)
    tmp = path.with_name(path.name + ".tmp")
    writer = StoreWriter(tmp, MODEL, fresh=True)
    try:
        writer.add_sequences(0, tokens)
        writer.flush()
        rows = []
        for s in range(n_sources):
            t0 = time.perf_counter()
            slug = f"{s}-mlp"
            with torch.inference_mode():
                acts = source_activations(tokens, s, n_units)
                acc = accumulated(acts, n_units)
                del acts
                cos = torch.from_numpy(np.random.default_rng(3000 + s).uniform(-0.3, 0.3, n_units).astype(np.float32))
                writer.write_table("examples", example_rows(MODEL, slug, acc, CTX))
                stats, bands = unit_rows(MODEL, slug, acc, cos)
            writer.write_table("unit_stats", stats)
            writer.write_table("bands", bands)
            top_ids, top_values, bottom_ids, bottom_values = logit_table(s, n_units)
            writer.write_table(
                "logits",
                pa.table(
                    {
                        "model": repeated(MODEL, n_units),
                        "source": repeated(slug, n_units),
                        "unit": pa.array(np.arange(n_units, dtype=np.int32)),
                        "top_ids": fixed_width_lists(top_ids),
                        "top_values": fixed_width_lists(top_values),
                        "bottom_ids": fixed_width_lists(bottom_ids),
                        "bottom_values": fixed_width_lists(bottom_values),
                    }
                ),
            )
            rows.append(
                {
                    "model": MODEL,
                    "slug": slug,
                    "hook_name": f"blocks.{s}.mlp.hook_post",
                    "kind": neuron.name,
                    "layer": s,
                    "n_units": n_units,
                    "spec": "{}",
                    "band_levels": list(acc.grid.levels),
                    "band_basis": neuron.band_basis,
                }
            )
            del acc, stats, bands
            writer.wait()  # one source's tables in memory at a time
            if not quiet:
                print(f"  source {slug}: {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        writer.write_rows("sources", rows)
        vocab = vocabulary(VOCAB)
        writer.write_table(
            "vocab",
            pa.table(
                {
                    "model": repeated(MODEL, VOCAB),
                    "token_id": pa.array(np.arange(VOCAB, dtype=np.int32)),
                    "token": pa.array(vocab),
                    "token_bytes": pa.array([t.encode() for t in vocab], type=pa.binary()),
                }
            ),
        )
        spec = {"kind": "native", "name": "synthetic-1m (no model: synthetic activations)", "slug": MODEL}
        writer.write_rows(
            "models",
            [
                {
                    "model": MODEL,
                    "spec": json.dumps({**spec, "processing": {}}),
                    "processing": "{}",
                    "loader": json.dumps({"synthetic": "bench/million_index.py"}),
                    "n_layers": n_sources,
                    "d_model": 256,
                    "d_vocab": VOCAB,
                    "n_ctx": CTX,
                    "ctx": CTX,
                    "bos_token_id": 0,
                    "eos_token_id": 0,
                    "n_sequences": N_SEQ,
                    "n_tokens": N_SEQ * (CTX - 1),
                }
            ],
        )
        writer.set_meta(
            "package_version",
            __version__,
            built_by="bench/million_index.py",
            run_config={"top_k": TOP_K, "band_size": BAND_SIZE, "window": list(WINDOW), "ctx": CTX},
        )
        writer.finish(path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def ensure_million_index(path: str | Path, n_sources: int = N_SOURCES, n_units: int = N_UNITS) -> Path:
    """The index at `path`: built there unless a file is already there."""
    path = Path(path).resolve()
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build(path, n_sources, n_units)
    size = path.stat().st_size
    print(
        f"built {path}: {n_sources * n_units:,} units in {time.perf_counter() - t0:.0f} s, {size / 2**30:.2f} GiB",
        file=sys.stderr,
    )
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", help="Index file to build (kept if it exists)")
    ap.add_argument("--sources", type=int, default=N_SOURCES)
    ap.add_argument("--units", type=int, default=N_UNITS, help="Units per source")
    args = ap.parse_args()
    print(ensure_million_index(args.path, args.sources, args.units))


if __name__ == "__main__":
    main()
