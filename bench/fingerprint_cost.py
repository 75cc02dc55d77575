"""What fingerprints cost the indexer: the demo index built with `--reservoir 4096` and
with `--reservoir 0`, in pairs, each build in a fresh process.

The machine is shared and its speed drifts by tens of percent within minutes, so single
times mean little: each round builds one pair back to back (with first in odd rounds,
without first in even ones, so neither side always gets the warmer machine), and the
figure is the **median of the rounds' paired ratios** (with / without), of wall time and
of CPU time. A drift between rounds cancels out; one within a round only adds noise,
which the median of several rounds keeps out.

Each build also reports where its time went (the run's phase clock): the batches, and the
fingerprints' own phase at the end (packing the values and handing them to the writer).

`--updates BATCHES` instead times the reservoirs' per-batch work alone, in this process:
the demo's shape (3 sources of 1,024 units, batches of 32 x 128, fresh positions in each)
with random activations, every source's update of every batch, wall and CPU seconds.

Usage (from outside the checkout):
  .venv/bin/python bench/fingerprint_cost.py [--rounds 6] [--reservoir 4096] [--max-tokens N] [--dir /tmp]
  .venv/bin/python bench/fingerprint_cost.py --updates 195
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BUILD = """
import json, sys, time
import duckdb
from actscope.indexer.config import IndexConfig
from actscope.indexer.demo import demo_options
from actscope.indexer.run import run_index
out, reservoir, max_tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options = demo_options(out)
options.update(reservoir=reservoir, quiet=True)
if max_tokens:
    options.update(max_tokens=max_tokens)
started, cpu = time.perf_counter(), time.process_time()
run_index(IndexConfig(**options))
wall, cpu = time.perf_counter() - started, time.process_time() - cpu
con = duckdb.connect(out, read_only=True)
phases = json.loads(con.execute("SELECT value FROM meta WHERE key = 'phase_seconds'").fetchone()[0])
con.close()
print(json.dumps({"wall": wall, "cpu": cpu, "phases": phases}))
"""


def build(out: Path, reservoir: int, max_tokens: int) -> dict:
    """One demo index built in a new process: its wall and CPU seconds and its phases."""
    out.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [sys.executable, "-c", BUILD, str(out), str(reservoir), str(max_tokens)],
        capture_output=True,
        text=True,
        env=env,
    )
    if done.returncode:
        sys.exit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def time_updates(n_batches: int, capacity: int, rounds: int) -> None:
    """The reservoirs' per-batch updates alone, on demo-shaped random batches."""
    import time

    import torch

    from actscope.indexer.accumulate.reservoir import FingerprintReservoir, ReservoirBatch

    batch, ctx, units, sources = 32, 128, 1024, 3
    gen = torch.Generator().manual_seed(0)
    acts = [torch.relu(torch.randn(batch, ctx, units, generator=gen)) for _ in range(sources)]
    tokens = torch.randint(0, 8192, (batch, ctx), generator=gen)
    for r in range(rounds):
        reservoirs = [FingerprintReservoir(units, capacity, "cpu") for _ in range(sources)]
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(n_batches):
            step = ReservoirBatch.of(tokens, i * batch, 0)
            for reservoir, values in zip(reservoirs, acts):
                reservoir.update(values, step)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(
            f"round {r + 1}: {n_batches} batches x {sources} sources of {units} units: "
            f"{wall:.2f} s wall, {cpu:.2f} s cpu ({1e3 * cpu / n_batches:.2f} ms cpu per batch)"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=6, help="pairs of builds (default 6)")
    ap.add_argument("--reservoir", type=int, default=4096, help="the side with fingerprints (default 4096)")
    ap.add_argument("--max-tokens", type=int, default=0, help="default: the demo's")
    ap.add_argument("--dir", default="/tmp")
    ap.add_argument("--updates", type=int, default=0, metavar="BATCHES", help="time the per-batch updates alone")
    args = ap.parse_args()
    if args.updates:
        time_updates(args.updates, args.reservoir, args.rounds)
        return 0
    paths = {n: Path(args.dir) / f"fingerprint-cost-{n}.duckdb" for n in (args.reservoir, 0)}
    ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
    batch_ratios: list[float] = []
    fingerprint_phase: list[float] = []
    for r in range(args.rounds):
        order = (args.reservoir, 0) if r % 2 == 0 else (0, args.reservoir)
        runs = {n: build(paths[n], n, args.max_tokens) for n in order}
        with_, without = runs[args.reservoir], runs[0]
        for key in ratios:
            ratios[key].append(with_[key] / without[key])
        batch_ratios.append(with_["phases"]["batches"] / without["phases"]["batches"])
        fingerprint_phase.append(with_["phases"].get("fingerprints", 0.0))
        print(
            f"round {r + 1} ({'with' if order[0] else 'without'} first): "
            f"with {with_['wall']:.1f} s wall / {with_['cpu']:.1f} s cpu, "
            f"without {without['wall']:.1f} s / {without['cpu']:.1f} s; "
            f"ratio {ratios['wall'][-1]:.3f} wall, {ratios['cpu'][-1]:.3f} cpu, "
            f"{batch_ratios[-1]:.3f} of the batches' phase; fingerprints phase {fingerprint_phase[-1]:.2f} s",
            flush=True,
        )
    for key, values in ratios.items():
        print(f"{key}: median paired ratio {statistics.median(values):.3f} ({', '.join(f'{v:.3f}' for v in values)})")
    print(f"batches phase: median paired ratio {statistics.median(batch_ratios):.3f}")
    print(f"fingerprints phase (packing, at the end): median {statistics.median(fingerprint_phase):.2f} s")
    sizes = {n: path.stat().st_size for n, path in paths.items()}
    print(f"file {sizes[0]:,} bytes without, {sizes[args.reservoir]:,} with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
