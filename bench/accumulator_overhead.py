"""Per-batch cost of the accumulators: forward passes with and without them.

The indexer's overhead over the bare forward pass has a fixed part (tokenising,
calibration, writing the file) and a per-batch part (every source's accumulator updated
inside the forward pass). This benchmark measures the per-batch part alone: the same
pre-tokenised batches go through the runner without accumulators (the floor) and with
them (calibrated and warmed up beforehand, as after the first batches of a run),
alternately in one process; each run with accumulators is divided by the mean of the
floors just before and after it.

    .venv/bin/python bench/accumulator_overhead.py [--max-tokens 262144] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=262144)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import torch

    from actscope.indexer import bundled
    from actscope.indexer.accumulate.calibrate import calibrate
    from actscope.indexer.config import IndexConfig
    from actscope.indexer.corpus.batches import iter_batches
    from actscope.indexer.corpus.documents import iter_documents
    from actscope.indexer.kinds import SourceRequest, build_sources
    from actscope.indexer.memory import keep_freed_memory
    from actscope.indexer.model.loading import load_model, resolve_model_spec
    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.model.saes import load_sae, resolve_sae_spec
    from actscope.indexer.run import accumulate_each, new_accumulators

    keep_freed_memory()  # as `actscope index` does
    sae_name = bundled.bundled_sae_names()[0]
    loaded = load_model(resolve_model_spec(bundled.DEFAULT_MODEL), "cpu")
    spec = resolve_sae_spec(sae_name)
    sources = build_sources(loaded.model, SourceRequest(saes=[(spec, load_sae(spec))]))
    runner = ActivationRunner(loaded.model, sources, reuse_outputs=True)
    batches = list(
        iter_batches(
            iter_documents("stdlib"),
            loaded.tokenizer,
            bos_token_id=loaded.bos_token_id,
            eos_token_id=loaded.eos_token_id,
            ctx=args.ctx,
            batch_size=args.batch_size,
            max_sequences=args.max_tokens // args.ctx,
        )
    )
    config = IndexConfig(
        model=bundled.DEFAULT_MODEL, dataset="stdlib", out="unused.duckdb", saes=[sae_name], device="cpu"
    )
    grids, _ = calibrate(runner, iter(batches), sources, config.calibration_tokens, config.hist_bins)
    warm, timed_batches = batches[:3], batches[3:]  # the first batches fill the empty top-k and bands
    n_tokens = sum(b.tokens.numel() for b in timed_batches)
    print(
        f"{bundled.DEFAULT_MODEL} + {sae_name}: {sum(s.n_units for s in sources)} units, {n_tokens:,} tokens "
        f"in {len(timed_batches)} timed batches; torch threads {torch.get_num_threads()}"
    )

    def floor() -> float:
        start = time.perf_counter()
        with torch.inference_mode():
            for batch in timed_batches:
                runner(batch.tokens)
        return time.perf_counter() - start

    def with_accumulators() -> tuple[float, float]:
        """(wall s, of which inside the accumulators)."""
        accumulators = new_accumulators(sources, grids, config, "cpu")
        with torch.inference_mode():
            for batch in warm:
                runner(batch.tokens, consume=accumulate_each(accumulators, batch.tokens, batch.first_seq, 0))
        inside = 0.0

        def timed(update):
            def consume(slug, acts, top_k):
                nonlocal inside
                begin = time.perf_counter()
                update(slug, acts, top_k)
                inside += time.perf_counter() - begin

            return consume

        start = time.perf_counter()
        with torch.inference_mode():
            for batch in timed_batches:
                runner(batch.tokens, consume=timed(accumulate_each(accumulators, batch.tokens, batch.first_seq, 0)))
        return time.perf_counter() - start, inside

    floor()
    with_accumulators()  # warm-up: compiled kernels loaded, buffers made
    floors, ratios = [floor()], []
    for round_ in range(args.rounds):
        wall, inside = with_accumulators()
        floors.append(floor())
        around = (floors[-2] + floors[-1]) / 2
        ratios.append(wall / around)
        print(
            f"round {round_ + 1}: floors around {around:.2f}s, with accumulators {wall:.2f}s "
            f"(inside them {inside:.2f}s, forward {wall - inside:.2f}s), ratio {ratios[-1]:.3f}"
        )
    print(f"median ratio {statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
