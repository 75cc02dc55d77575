"""Indexer overhead: the full indexer against the bare forward pass plus SAE encodes.

Both run on the same tokens in the same batches, alternately, in one process; the
figure that matters is their ratio. These machines are shared and noisy, so each indexer
run is compared with the floor runs just before and after it, and the median of those
`--rounds` ratios is printed (with the ratio of the fastest runs of each side).

    .venv/bin/python bench/index_overhead.py [--max-tokens 262144] [--rounds 3] [--interleaved 3] [--fresh-processes]
        [--heads METRIC ...] [--dla] [--reservoir N] [--fingerprint-cost]

`--heads METRIC` (repeatable, `all` for every metric) also indexes those attention-head
metrics, and `--dla` the direct-effect twins; the floor stays the same, so the ratio is
their cost on top of it.

`--reservoir N` sets the indexer's fingerprint reservoir (default: the indexer's, 4096;
0: no fingerprints). `--fingerprint-cost` makes each interleaved round a pair of indexer
runs, one with the reservoir and one with none (which goes first alternates), and prints
both overheads and the median of the pairs' ratios (with / without): what fingerprints
add to the index time, each side measured against the floor beside it.

The machine's speed also drifts from one run to the next (floors of the same tokens have
ranged from 12 to 21 s within minutes), so `--interleaved ROUNDS` (default 3) then also
runs the indexer with the floor's forward pass of each batch run right beside the
indexer's own, timed apart: both sides then see the machine at the same seconds.

Much of the noise is system time: the kernel zeroing fresh pages for the forward pass's
large tensors, whose number depends on the allocator's state, i.e. on what the process
did before. `--fresh-processes` runs each measurement in a new process (after the same
warm-up), so one side's history never changes the other's page faults.

Model: the bundled toy-2l and its SAE when installed; otherwise a random model of the
same shape (2 layers, d_model 256, d_mlp 1024, vocab 8192) with a random TopK SAE of
4096 features, so the benchmark runs before the bundled weights exist.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bench_model(work: Path) -> tuple[str, str]:
    """(model, sae) arguments for `actscope index`."""
    from actscope.indexer import bundled

    saes = bundled.bundled_sae_names()
    if bundled.model_dir(bundled.DEFAULT_MODEL) is not None and saes:
        return bundled.DEFAULT_MODEL, saes[0]
    import torch
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata
    from tokenizers import ByteLevelBPETokenizer
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from actscope.indexer.corpus.builtin import iter_documents
    from actscope.indexer.model.loading import save_native

    docs = [doc for _, doc in zip(range(400), iter_documents("stdlib"))]
    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(docs, vocab_size=8192, special_tokens=["<|endoftext|>"], show_progress=False)
    tokenizer.save(str(work / "tokenizer.json"))
    torch.manual_seed(0)
    cfg = HookedTransformerConfig(
        n_layers=2,
        d_model=256,
        d_head=32,
        n_heads=8,
        d_mlp=1024,
        n_ctx=256,
        d_vocab=8192,
        act_fn="gelu",
        normalization_type="LN",
        seed=0,
    )
    model_dir = save_native(
        HookedTransformer(cfg), work / "tokenizer.json", work / "bench-2l", "bench-2l", "<|endoftext|>", "<|endoftext|>"
    )
    sae = TopKSAE(TopKSAEConfig(d_in=256, d_sae=4096, k=32, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post")))
    sae.save_model(str(work / "bench-sae"))
    return str(model_dir), str(work / "bench-sae")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-tokens", type=int, default=262144)
    parser.add_argument("--ctx", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dataset", default="stdlib")
    parser.add_argument("--rounds", type=int, default=3, help="classic rounds (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--fresh-processes",
        action="store_true",
        help="each floor and indexer run in a new process, after the same warm-up",
    )
    parser.add_argument(
        "--interleaved",
        type=int,
        default=3,
        metavar="ROUNDS",
        help="then ROUNDS indexer runs with the floor's pass of each batch beside the "
        "indexer's own (0: none; not with --fresh-processes)",
    )
    parser.add_argument(
        "--heads",
        action="append",
        default=[],
        metavar="METRIC",
        help="also index this head metric (repeatable; all: every one), against the same floor",
    )
    parser.add_argument(
        "--dla", action="store_true", help="the indexer also indexes the --dla twins (the floor stays the same)"
    )
    parser.add_argument(
        "--reservoir",
        type=int,
        default=None,
        metavar="N",
        help="the indexer's fingerprint positions (default: the indexer's; 0: no fingerprints)",
    )
    parser.add_argument(
        "--fingerprint-cost",
        action="store_true",
        help="each interleaved round runs the indexer with --reservoir and with none, and compares them",
    )
    parser.add_argument("--worker", choices=["floor", "indexer"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--sae", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.fingerprint_cost and (args.fresh_processes or args.interleaved < 1):
        parser.error("--fingerprint-cost compares interleaved rounds: not with --fresh-processes or --interleaved 0")
    if "all" in args.heads:
        from actscope.indexer.kinds.head import METRICS

        args.heads = list(METRICS)

    import torch

    from actscope.indexer.memory import keep_freed_memory

    keep_freed_memory()  # as `actscope index` does, for the floor too (see indexer/memory.py)
    if args.threads:
        torch.set_num_threads(args.threads)

    from actscope.indexer.config import IndexConfig
    from actscope.indexer.corpus.batches import iter_batches
    from actscope.indexer.corpus.documents import iter_documents
    from actscope.indexer.kinds import SourceRequest, build_sources
    from actscope.indexer.model.loading import load_model, resolve_model_spec
    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.model.saes import load_sae, resolve_sae_spec
    from actscope.indexer.run import run_index

    reservoir = IndexConfig.reservoir if args.reservoir is None else args.reservoir

    work = Path(tempfile.mkdtemp(prefix="actscope-bench-"))
    model_arg, sae_arg = (args.model, args.sae) if args.worker else bench_model(work)
    loaded = load_model(resolve_model_spec(model_arg), "cpu")
    spec = resolve_sae_spec(sae_arg)
    sources = build_sources(loaded.model, SourceRequest(saes=[(spec, load_sae(spec))]))
    runner = ActivationRunner(loaded.model, sources, reuse_outputs=True)  # as the indexer runs it
    batches = [
        b.tokens
        for b in iter_batches(
            iter_documents(args.dataset),
            loaded.tokenizer,
            bos_token_id=loaded.bos_token_id,
            eos_token_id=loaded.eos_token_id,
            ctx=args.ctx,
            batch_size=args.batch_size,
            max_sequences=args.max_tokens // args.ctx,
        )
    ]
    n_tokens = sum(b.numel() for b in batches)
    units = sum(s.n_units for s in sources)
    print(
        f"model {model_arg}, SAE {sae_arg}: {len(sources)} sources, {units} units; "
        f"{n_tokens:,} tokens in {len(batches)} batches of {args.batch_size}x{args.ctx}; "
        f"torch threads {torch.get_num_threads()}"
        + (f"; the indexer also indexes head metrics {', '.join(args.heads)}" if args.heads else "")
        + ("; the indexer adds the --dla twins" if args.dla else "")
        + f"; fingerprint reservoir {reservoir}"
    )

    def timed(work) -> tuple[float, float, float, int]:
        """(wall s, cpu s, of which system s, minor page faults) of work()."""
        before, start, cpu = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter(), time.process_time()
        work()
        after = resource.getrusage(resource.RUSAGE_SELF)
        return (
            time.perf_counter() - start,
            time.process_time() - cpu,
            after.ru_stime - before.ru_stime,
            after.ru_minflt - before.ru_minflt,
        )

    def floor() -> tuple[float, float, float, int]:
        def forward_all() -> None:
            with torch.inference_mode():
                for tokens in batches:
                    runner(tokens)

        return timed(forward_all)

    def indexer(
        round_: int, max_tokens: int = args.max_tokens, reservoir: int = reservoir
    ) -> tuple[float, float, float, int]:
        out = work / f"bench-{round_}.duckdb"
        config = IndexConfig(
            model=model_arg,
            dataset=args.dataset,
            out=str(out),
            saes=[sae_arg],
            heads=args.heads,
            max_tokens=max_tokens,
            ctx=args.ctx,
            batch_size=args.batch_size,
            device="cpu",
            quiet=True,
            checkpoint_every=0,
            dla=args.dla,
            reservoir=reservoir,
        )
        elapsed = timed(lambda: run_index(config))
        out.unlink()
        return elapsed

    if args.worker:  # one measurement after the warm-up, for the parent process
        floor() if args.worker == "floor" else indexer(-1, 16 * args.ctx * args.batch_size)
        print(json.dumps(floor() if args.worker == "floor" else indexer(0)))
        return

    def measure(side: str, round_: int):
        """One run of `side`: here, or in a new process after the same warm-up."""
        if not args.fresh_processes:
            return floor() if side == "floor" else indexer(round_)
        command = [
            sys.executable,
            __file__,
            "--worker",
            side,
            "--model",
            model_arg,
            "--sae",
            sae_arg,
            "--max-tokens",
            str(args.max_tokens),
            "--ctx",
            str(args.ctx),
            "--batch-size",
            str(args.batch_size),
            "--dataset",
            args.dataset,
            "--threads",
            str(args.threads),
            *(f"--heads={metric}" for metric in args.heads),
            *(["--dla"] if args.dla else []),
            f"--reservoir={reservoir}",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return tuple(json.loads(done.stdout.strip().splitlines()[-1]))

    def interleaved(round_: int, reservoir: int = reservoir) -> tuple[float, float]:
        """(floor s, indexer s) of one indexer run with a floor forward pass of each batch's
        tokens run beside the indexer's own: just before it on even batches, just after it
        on odd ones. The indexer's time is the run's minus those floor passes, so both sides
        see the machine at the same seconds, however its speed drifts."""
        original_call = ActivationRunner.__call__
        floor_time, calls = [0.0], [0]

        def floor_pass(tokens) -> None:
            start = time.perf_counter()
            original_call(runner, tokens)
            floor_time[0] += time.perf_counter() - start

        def beside(self, tokens, consume=None):  # only the indexer's runner calls it
            even = calls[0] % 2 == 0
            calls[0] += 1
            if even:
                floor_pass(tokens)
            result = original_call(self, tokens, consume)
            if not even:
                floor_pass(tokens)
            return result

        ActivationRunner.__call__ = beside
        try:
            wall = indexer(round_, reservoir=reservoir)[0]
        finally:
            ActivationRunner.__call__ = original_call
        # The calibration batches are accumulated from kept activations, without a forward
        # pass of their own; each batch still got one floor pass.
        assert calls[0] == len(batches), (calls[0], len(batches))
        return floor_time[0], wall - floor_time[0]

    if not args.fresh_processes:
        floor()  # warm-up: first-call allocations and thread pools
        # Warm-up: the compiled kernels loaded (or compiled, on the first run after an install).
        indexer(-1, 16 * args.ctx * args.batch_size)

    def classic_rounds() -> None:
        # floor, indexer, floor, indexer, ..., floor: each indexer run is compared with the mean
        # of the floors just before and after it, so a machine that speeds up or slows down
        # (shared cores) moves both sides of each ratio alike.
        floors, indexers, ratios = [measure("floor", -1)], [], []
        for round_ in range(args.rounds):
            indexers.append(measure("indexer", round_))
            floors.append(measure("floor", round_))
            around = [(floors[-2][k] + floors[-1][k]) / 2 for k in (0, 1)]
            ratios.append(tuple(indexers[-1][k] / around[k] for k in (0, 1)))
            print(
                f"round {round_ + 1}: floors around {around[0]:.2f}s wall / {around[1]:.2f}s cpu, "
                f"indexer {indexers[-1][0]:.2f}s wall / {indexers[-1][1]:.2f}s cpu, "
                f"ratio {ratios[-1][0]:.3f} wall / {ratios[-1][1]:.3f} cpu"
            )
            print(
                f"         system time (page faults): floors {floors[-2][2]:.2f}s ({floors[-2][3]:,}) and "
                f"{floors[-1][2]:.2f}s ({floors[-1][3]:,}), indexer {indexers[-1][2]:.2f}s ({indexers[-1][3]:,})"
            )
        for label, which in (("wall", 0), ("cpu", 1)):
            best_floor = min(f[which] for f in floors)
            best_indexer = min(i[which] for i in indexers)
            print(
                f"{label}: floor (forward + SAE encode) {best_floor:.2f}s = {n_tokens / best_floor:,.0f} tokens/s; "
                f"indexer (everything, incl. calibration and writing) {best_indexer:.2f}s = "
                f"{n_tokens / best_indexer:,.0f} tokens/s; fastest / fastest = {best_indexer / best_floor:.3f}; "
                f"median of the rounds' ratios = {statistics.median(r[which] for r in ratios):.3f}"
            )

    if args.rounds:
        classic_rounds()
    if args.fingerprint_cost:
        pairs: list[float] = []
        for round_ in range(args.interleaved):
            # With first in odd rounds, without first in even ones: neither always gets the warmer machine.
            order = (reservoir, 0) if round_ % 2 == 0 else (0, reservoir)
            overhead = {}
            for n in order:
                floor_s, indexer_s = interleaved(round_, n)
                overhead[n] = indexer_s / floor_s
            pairs.append(overhead[reservoir] / overhead[0])
            print(
                f"fingerprint round {round_ + 1}: overhead {overhead[reservoir]:.3f} with a reservoir of {reservoir}, "
                f"{overhead[0]:.3f} without; index time with / without {pairs[-1]:.3f}"
            )
        print(
            f"fingerprints: median of the rounds' index time ratios (with / without) = {statistics.median(pairs):.3f}"
        )
    elif args.interleaved and not args.fresh_processes:
        side_by_side = []
        for round_ in range(args.interleaved):
            floor_s, indexer_s = interleaved(round_)
            side_by_side.append(indexer_s / floor_s)
            print(
                f"interleaved round {round_ + 1}: floor {floor_s:.2f}s, indexer {indexer_s:.2f}s, "
                f"ratio {side_by_side[-1]:.3f}"
            )
        print(f"interleaved: median of the rounds' ratios = {statistics.median(side_by_side):.3f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
