"""One `actscope index` of a bench/index_scale.py case, in this process, with each
phase's wall and CPU time (the process's, all threads): CPU time says what a phase costs
when the machine is shared and wall times are not comparable. Run it against two installs
alternately (PYTHONPATH pointing at an older copy of the package) to compare them; the
random models are built under --work by index_scale.py's code, once.

Usage:
  .venv/bin/python bench/index_phases.py --case 100k --tokens 16384 --work /tmp/scale --out /tmp/phases.duckdb
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import index_scale  # noqa: E402 (the bench's own module, beside this one)


def main() -> None:
    from actscope.indexer import phases

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", default="100k", choices=sorted(index_scale.CASES))
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--work", default="/tmp/actscope-index-scale")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cpu: dict[str, float] = {}
    timed = phases.PhaseClock.phase

    @contextmanager
    def phase(self, name: str):
        start = time.process_time()
        with timed(self, name):
            yield
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - start

    phases.PhaseClock.phase = phase
    case = index_scale.CASES[args.case]
    model, saes = index_scale.build(case, Path(args.work))
    result = index_scale.index(model, saes, args.tokens, args.out, case.max_state_gb)
    wall = result["phases"]
    for name in wall:
        print(f"{name:>22}: {wall[name]:7.2f} s wall {cpu.get(name, float('nan')):7.2f} s CPU")
    print(
        json.dumps(
            {"seconds": round(result["seconds"], 1), "wall": wall, "cpu": {k: round(v, 2) for k, v in cpu.items()}}
        )
    )


if __name__ == "__main__":
    main()
