"""`actscope index --workers N`: a run's N shards (shards.py) as Ray tasks, their states
merged in a tree of Ray tasks, and one finalize here, in the driver, that writes --out.

Without --ray-address the run starts a local Ray instance (and stops it at the end); a
driver that has already connected to Ray (ray.init) runs on that cluster. Each shard
task takes one GPU when the cluster has GPUs, else its share of the CPUs. A task whose
worker dies is retried (Ray's max_retries) and goes on from its own checkpoint in the
state directory, which every node must share. A completed run removes its shards' files
from the state directory; an interrupted one leaves them, for --resume.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

from actscope.indexer.config import IndexConfig
from actscope.indexer.errors import ActscopeError
from actscope.indexer.shards import CALIBRATION_FILE, Shard

RETRIES = 3  # Ray runs a task again this many times when its worker or node dies
STATE_PATTERNS = (
    CALIBRATION_FILE,
    f"{CALIBRATION_FILE}.*.part",
    "shard-*-of-*.state",
    "shard-*-of-*.state.*.part",
    "shard-*-of-*.sequences.duckdb*",
    "merged-*-of-*.pt*",
)


def run_on_ray(
    config: IndexConfig, workers: int, state_dir: Path, address: str | None = None, owned_dir: bool = False
) -> str:
    """Index `config` as `workers` shards on Ray into config.out; a summary line.
    `owned_dir`: the state directory is the run's own (the default one), removed when done."""
    from actscope.indexer.merge import IndexOverrides, find_states, write_index
    from actscope.indexer.shard_state import load_state

    try:
        import ray
    except ImportError:
        raise ActscopeError("--workers runs on Ray, which is not installed: pip install 'actscope[ray]'") from None
    started = time.perf_counter()
    owned = not ray.is_initialized()
    if owned:
        _start(ray, address)
    try:
        if not config.resume:
            clear_state_dir(state_dir)
        resources = _task_resources(ray.cluster_resources(), workers, gpus=config.device != "cpu")
        _say(config, f"{workers} shards on Ray, {_describe(resources)} each; states in {state_dir}")
        shard_task = ray.remote(max_retries=RETRIES)(index_shard).options(**resources)
        pending = {shard_task.remote(config, i, workers, str(state_dir)): i for i in range(workers)}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            index = pending.pop(ready[0])
            _result(ray, ready[0], f"shard {index}/{workers}", state_dir)
            _say(config, f"shard {index}/{workers} done")
        headers = find_states(state_dir)
        root = _merge_tree(ray, [h.path for h in headers], state_dir)
        _say(config, "merging the shards' states")
        header, _, accumulators = load_state(Path(_result(ray, root, "the merge", state_dir)))
        overrides = IndexOverrides(out=config.out, device=config.device, quiet=config.quiet)
        summary = write_index(header, accumulators, headers, overrides, started, merged_by=f"ray, {workers} workers")
    finally:
        if owned:
            ray.shutdown()
    clear_state_dir(state_dir)
    if owned_dir:
        try:
            state_dir.rmdir()
        except OSError:
            pass  # someone else's files are in it
    return summary


def index_shard(config: IndexConfig, index: int, count: int, state_dir: str) -> str:
    """The Ray task of one shard: it always resumes, so a retry goes on from the checkpoint
    (the driver has cleared the directory when the run is not a resumed one)."""
    from actscope.indexer.shards import run_shard

    _use_assigned_cpus()
    config = dataclasses.replace(config, quiet=True)  # N progress bars would interleave in the driver's log
    run_shard(config, Shard(index, count), Path(state_dir), resume=True)
    return str(Shard(index, count).state_path(Path(state_dir)))


def merge_pair(first, second, out: str) -> str:
    """The Ray task of one merge in the tree: two adjacent states into `out`."""
    from actscope.indexer.shard_state import merge_pair as merge

    merge(Path(first), Path(second), Path(out))
    return out


def clear_state_dir(state_dir: Path) -> None:
    """The files a run keeps in its state directory (and nothing else) removed."""
    for pattern in STATE_PATTERNS:
        for path in state_dir.glob(pattern):
            path.unlink(missing_ok=True)


def _start(ray, address: str | None) -> None:
    import logging

    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        where = f"--ray-address {address}" if address else "a local Ray instance"
        raise ActscopeError(f"cannot start or reach {where}: {exc}") from exc


def _task_resources(cluster: dict, workers: int, gpus: bool = True) -> dict:
    """One GPU per shard on a cluster with GPUs (unless `gpus` is off: --device cpu),
    else an equal share of the CPUs."""
    if gpus and cluster.get("GPU", 0) >= 1:
        return {"num_gpus": 1, "num_cpus": 1}
    return {"num_cpus": max(1, int(cluster.get("CPU", 1)) // workers)}


def _describe(resources: dict) -> str:
    if resources.get("num_gpus"):
        return "1 GPU"
    cpus = resources["num_cpus"]
    return f"{cpus} CPU{'s' if cpus > 1 else ''}"


def _use_assigned_cpus() -> None:
    """torch's and numba's threads set to the CPUs Ray gave this task (not the node's)."""
    import numba
    import ray
    import torch

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        threads = max(1, int(cpus))
        torch.set_num_threads(threads)
        numba.set_num_threads(min(threads, numba.get_num_threads()))


def _merge_tree(ray, paths: list[Path], state_dir: Path):
    """The states merged pairwise, level by level, as Ray tasks (each starts as soon as
    its two inputs exist); the reference to the root's path."""
    merge_task = ray.remote(max_retries=RETRIES)(merge_pair).options(num_cpus=1)
    count = len(paths)
    level = [(i, i, str(path)) for i, path in enumerate(paths)]  # (first shard, last shard, path or ref)
    while len(level) > 1:
        merged = []
        for a, b in zip(level[0::2], level[1::2]):
            out = state_dir / f"merged-{a[0]}-{b[1]}-of-{count}.pt"
            merged.append((a[0], b[1], merge_task.remote(a[2], b[2], str(out))))
        if len(level) % 2:
            merged.append(level[-1])
        level = merged
    root = level[0][2]
    return root if not isinstance(root, str) else ray.put(root)


def _result(ray, ref, what: str, state_dir: Path) -> str:
    """A task's result, its failure as one clear error."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, ActscopeError):
            raise ActscopeError(f"{what}: {cause}") from None
        raise
    except ray.exceptions.RayError as exc:  # the worker or its node died more often than Ray retries
        raise ActscopeError(
            f"{what} failed {RETRIES + 1} times ({type(exc).__name__}); its checkpoint is kept in {state_dir}: "
            "run the same command with --resume to go on from it"
        ) from exc


def _say(config: IndexConfig, line: str) -> None:
    if not config.quiet:
        print(line, file=sys.stderr)
