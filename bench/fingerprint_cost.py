"""What fingerprints cost the indexer: the demo index built with `--reservoir 4096` and
with `--reservoir 0`, alternately, each in a fresh process; wall times, their ratio and
the files' sizes. The machine is shared and noisy, so look at the pairwise ratios too.

Usage (from outside the checkout):
  .venv/bin/python bench/fingerprint_cost.py [--rounds 3] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from pathlib import Path

BUILD = """
import sys, time
from actscope.indexer.config import IndexConfig
from actscope.indexer.demo import demo_options
from actscope.indexer.run import run_index
options = demo_options(sys.argv[1])
options.update(reservoir=int(sys.argv[2]), quiet=True)
started = time.perf_counter()
run_index(IndexConfig(**options))
print(time.perf_counter() - started)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--dir", default="/tmp")
    args = ap.parse_args()
    times: dict[int, list[float]] = {0: [], 4096: []}
    for r in range(args.rounds):
        for n in (0, 4096) if r % 2 == 0 else (4096, 0):  # alternate which side goes first
            out = Path(args.dir) / f"fingerprint-cost-{n}.duckdb"
            out.unlink(missing_ok=True)
            done = subprocess.run([sys.executable, "-c", BUILD, str(out), str(n)], capture_output=True, text=True)
            if done.returncode:
                print(done.stderr, file=sys.stderr)
                return 1
            times[n].append(float(done.stdout.strip().splitlines()[-1]))
            print(f"reservoir {n}: {times[n][-1]:.1f} s", flush=True)
    without, with_ = statistics.median(times[0]), statistics.median(times[4096])
    print(f"median {without:.1f} s without, {with_:.1f} s with: ratio {with_ / without:.3f}")
    print("pairwise ratios", [round(a / b, 3) for a, b in zip(times[4096], times[0])])
    sizes = {n: os.path.getsize(Path(args.dir) / f"fingerprint-cost-{n}.duckdb") for n in times}
    print(f"file {sizes[0]:,} bytes without, {sizes[4096]:,} with")
    return 0


if __name__ == "__main__":
    sys.exit(main())
