"""Peak memory of `actscope index` for growing corpus lengths: it must not grow with them.

    .venv/bin/python bench/index_memory.py [--tokens 65536,262144] [--model toy-2l --sae toy-2l/...]

Each length runs in a fresh process; its peak resident set size is read from the
kernel's accounting of that child alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

MEASURE = """
import json, resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(json.dumps(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", default="65536,262144")
    parser.add_argument("--model", default=None)
    parser.add_argument("--sae", default=None)
    parser.add_argument("--dataset", default="stdlib")
    args = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from index_overhead import bench_model

    work = Path(tempfile.mkdtemp(prefix="actscope-mem-"))
    model, sae = (args.model, args.sae) if args.model else bench_model(work)
    actscope = str(Path(sys.executable).parent / "actscope")
    print(f"model {model}, SAE {sae}, dataset {args.dataset}")
    for tokens in (int(t) for t in args.tokens.split(",")):
        out = work / f"mem-{tokens}.duckdb"
        command = [
            actscope,
            "index",
            "--model",
            model,
            "--dataset",
            args.dataset,
            "--out",
            str(out),
            "--max-tokens",
            str(tokens),
            "--device",
            "cpu",
            "--quiet",
        ]
        if sae:
            command += ["--sae", sae]
        peak_kb = json.loads(
            subprocess.run([sys.executable, "-c", MEASURE, *command], check=True, capture_output=True, text=True)
            .stdout.strip()
            .splitlines()[-1]
        )
        print(f"{tokens:>10,} tokens: peak RSS {peak_kb / 1024:,.0f} MB, index {out.stat().st_size / 2**20:,.1f} MB")
        out.unlink()


if __name__ == "__main__":
    main()
