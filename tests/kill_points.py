"""Kill an indexing run with SIGKILL at seeded random points, then resume it.

Run as a script by tests/test_faults_indexer.py: `python kill_points.py SPEC.json`. The
heavy modules are imported once here, and every run (the uninterrupted reference, each
killed run, each resume) is a child forked from this process, which itself never runs the
model: no thread pool exists yet to be lost in the fork, and a run costs no import time.

A killed run installs its fault in the child only: at the chosen event of its phase it
sleeps a seeded few milliseconds (the writer thread goes on inserting meanwhile) and then
sends itself SIGKILL, so nothing of the run gets to clean up. At a checkpoint the kill
lands inside the write: the partial file is cut at a seeded fraction first.

The spec: {"config": IndexConfig fields, "dir": work folder, "seed": int, "phases": [...],
"parallel": runs at a time, "disk": {"out": path on a small filesystem, "grow": command
that gives it room again, or "fsize_limit": bytes}}.
Prints one JSON object: the reference's event counts and, per point, what happened.
"""

from __future__ import annotations

import importlib
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

import torch

from actscope.indexer import checkpoint as checkpoint_module
from actscope.indexer import run as run_module
from actscope.indexer.accumulate import calibrate as calibrate_module
from actscope.indexer.config import IndexConfig
from actscope.indexer.store import writer as writer_module

# Everything a run imports, imported before forking: each child starts at once.
PRELOAD = [
    "duckdb",
    "pyarrow",
    "sae_lens",
    "tqdm",
    "transformer_lens",
    "actscope.cli",
    "actscope.indexer.kinds",
    "actscope.indexer.weights",
    "actscope.indexer.accumulate.dense",
    "actscope.indexer.accumulate.sparse",
    "actscope.indexer.accumulate.finalize",
    "actscope.indexer.accumulate.kernels_cpu",
    "actscope.indexer.corpus.batches",
    "actscope.indexer.corpus.documents",
    "actscope.indexer.corpus.prefetch",
    "actscope.indexer.model.loading",
    "actscope.indexer.model.runner",
    "actscope.indexer.model.saes",
    "actscope.indexer.model.token_bytes",
]
for _name in PRELOAD:
    importlib.import_module(_name)

PHASES = ("calibration", "streaming", "checkpoint", "finalize")


def _die(delay_ms: float) -> None:
    time.sleep(delay_ms / 1000)
    os.kill(os.getpid(), signal.SIGKILL)


def _instrument(counts: dict[str, int], fault: dict | None) -> None:
    """Count each phase's events; with `fault`, die at its event `n` of its phase."""

    def event(phase: str) -> None:
        counts[phase] += 1
        if fault and fault["phase"] == phase and counts[phase] == fault["n"]:
            _die(fault["delay_ms"])

    real_calibrate = calibrate_module.calibrate

    def calibrate(runner, batches, *args, **kwargs):
        def counted():
            for batch in batches:
                event("calibration")  # the batch's forward pass comes next
                yield batch

        return real_calibrate(runner, counted(), *args, **kwargs)

    real_stream_all = run_module.stream_all

    def stream_all(run, all_steps, *args, **kwargs):
        def counted():
            for step in all_steps:
                event("streaming")
                yield step

        return real_stream_all(run, counted(), *args, **kwargs)

    real_save = torch.save

    def save(obj, path, *args, **kwargs):
        real_save(obj, path, *args, **kwargs)
        counts["checkpoint"] += 1
        if fault and fault["phase"] == "checkpoint" and counts["checkpoint"] == fault["n"]:
            path.flush()  # killed while writing: the partial file is cut short
            os.ftruncate(path.fileno(), int(path.tell() * fault["fraction"]))
            _die(0)

    real_write_table = writer_module.StoreWriter.write_table
    real_finish = writer_module.StoreWriter.finish
    in_finalize = {"on": False}

    def write_table(self, name, table):
        real_write_table(self, name, table)
        if in_finalize["on"]:
            event("finalize")  # the insert runs on the writer thread meanwhile

    def finish(self, *args, **kwargs):
        event("finalize")
        real_finish(self, *args, **kwargs)
        event("finalize")  # renamed into place; the checkpoint is not yet removed

    real_finalize = run_module.finalize

    def finalize(*args, **kwargs):
        in_finalize["on"] = True
        return real_finalize(*args, **kwargs)

    calibrate_module.calibrate = calibrate
    run_module.stream_all = stream_all
    checkpoint_module.torch.save = save
    writer_module.StoreWriter.write_table = write_table
    writer_module.StoreWriter.finish = finish
    run_module.finalize = finalize


def _child(config: IndexConfig, fault: dict | None, report: Path, fsize_limit: int | None) -> None:
    """The body of a forked run, through the CLI's error handling: never returns."""
    import resource

    from actscope.cli import user_errors

    status = 1
    counts = dict.fromkeys(PHASES, 0)
    stderr = report.with_suffix(".stderr")
    with open(stderr, "w") as file:  # everything written to fd 2, tracebacks included
        os.dup2(file.fileno(), 2)
    try:
        if fsize_limit is not None:  # no file may grow past it: writes fail with EFBIG
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, resource.RLIM_INFINITY))
        _instrument(counts, fault)
        user_errors(run_module.run_index)(config)
        status = 0
    except SystemExit as exc:  # user_errors: `error: ...` printed, exit status 2
        status = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        sys.stderr.flush()
        report.write_text(json.dumps({"counts": counts, "stderr": stderr.read_text()}))
        os._exit(status)


def _fork_runs(runs: list[tuple[IndexConfig, dict | None, Path]], fsize_limit: int | None = None) -> list[dict]:
    """Fork a child per (config, fault, report path), all at once, and wait for them all."""
    started = time.monotonic()
    pids = []
    for config, fault, report in runs:
        report.unlink(missing_ok=True)
        pid = os.fork()
        if pid == 0:
            _child(config, fault, report, fsize_limit)
        pids.append(pid)
    results = []
    for pid, (_, _, report) in zip(pids, runs):
        _, status = os.waitpid(pid, 0)
        result = json.loads(report.read_text()) if report.exists() else {}
        result["signal"] = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        result["exit"] = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
        result["seconds"] = round(time.monotonic() - started, 2)
        results.append(result)
    return results


def _fork_run(config: IndexConfig, fault: dict | None, report: Path, fsize_limit: int | None = None) -> dict:
    return _fork_runs([(config, fault, report)], fsize_limit)[0]


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    work = Path(spec["dir"])
    base = spec["config"]
    report = work / "report.json"

    reference_out = work / "reference.duckdb"
    reference = _fork_run(IndexConfig(**{**base, "out": str(reference_out)}), None, report)
    counts = reference["counts"]
    rng = random.Random(spec["seed"])
    faults = [
        {
            "phase": phase,
            "n": rng.randint(1, counts[phase]),
            "delay_ms": round(rng.uniform(0, 30), 1),
            "fraction": round(rng.uniform(0.05, 0.95), 2),
        }
        for phase in spec["phases"]
    ]
    points = []
    # Points run `parallel` at a time (each its own files): on idle cores that halves the time.
    parallel = int(spec.get("parallel", 1))
    for first in range(0, len(faults), parallel):
        group = range(first, min(first + parallel, len(faults)))
        outs = {i: work / f"point{i}.duckdb" for i in group}
        reports = {i: work / f"report{i}.json" for i in group}
        killed = _fork_runs([(IndexConfig(**{**base, "out": str(outs[i])}), faults[i], reports[i]) for i in group])
        after_kill = [
            {"out_exists": outs[i].exists(), "checkpoint": Path(str(outs[i]) + ".ckpt").exists()} for i in group
        ]
        resumed = _fork_runs(
            [(IndexConfig(**{**base, "out": str(outs[i]), "resume": True}), None, reports[i]) for i in group]
        )
        for j, i in enumerate(group):
            points.append(
                {
                    "fault": faults[i],
                    "killed": killed[j],
                    "after_kill": after_kill[j],
                    "resumed": resumed[j],
                    "out": str(outs[i]),
                    "left": sorted(p.name for p in work.glob(f"point{i}.duckdb.*")),
                }
            )
    full = None
    if spec.get("disk"):
        full = _disk_full(spec["disk"], base, report)
    print(json.dumps({"reference": reference, "reference_out": str(reference_out), "points": points, "disk": full}))


def _disk_full(disk: dict, base: dict, report: Path) -> dict:
    """A run that runs out of space (a small filesystem, or a file size limit), then,
    once there is space again (`grow` run), the same run resumed."""
    import subprocess

    out = Path(disk["out"])
    config = IndexConfig(**{**base, "out": str(out)})
    failed = _fork_run(config, None, report, disk.get("fsize_limit"))
    after = {
        "out_exists": out.exists(),
        "checkpoint": Path(str(out) + ".ckpt").exists(),
        "files": sorted(p.name for p in out.parent.iterdir()),
    }
    if disk.get("grow"):
        subprocess.run(disk["grow"], check=True)
    resumed = _fork_run(IndexConfig(**{**base, "out": str(out), "resume": True}), None, report)
    left = sorted(p.name for p in out.parent.iterdir())
    return {"failed": failed, "after": after, "resumed": resumed, "out": str(out), "left": left}


if __name__ == "__main__":
    main(sys.argv[1])
