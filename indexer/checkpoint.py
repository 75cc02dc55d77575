"""Checkpoints: the accumulator state of a run, saved atomically next to the output.

A checkpoint records the options that determine the index; a resumed run must use the
same ones, and then produces exactly the index an uninterrupted run would.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from actscope.indexer.accumulate.grid import Grid
from actscope.indexer.errors import ActscopeError


def _normalise(identity: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(identity, default=str))


def save_checkpoint(
    path: Path,
    identity: dict[str, Any],
    batches_done: int,
    n_sequences: int,
    grids: dict[str, Grid],
    accumulators: dict,
) -> None:
    state = {
        "identity": _normalise(identity),
        "batches_done": batches_done,
        "n_sequences": n_sequences,
        "grids": {slug: grid.state_dict() for slug, grid in grids.items()},
        "accumulators": {slug: acc.state_dict() for slug, acc in accumulators.items()},
    }
    partial = _partial(path)
    try:
        with open(partial, "wb") as file:  # through Python's file: a full disk is an OSError that says so
            torch.save(state, file)
    except BaseException:
        partial.unlink(missing_ok=True)  # e.g. the disk is full: the last checkpoint stays as it was
        raise
    os.replace(partial, path)


def _partial(path: Path) -> Path:
    return Path(str(path) + ".part")


def remove_checkpoint(path: Path) -> None:
    """The checkpoint and any partial one a killed run was writing."""
    for part in (Path(path), _partial(path)):
        part.unlink(missing_ok=True)


def load_checkpoint(path: Path, identity: dict[str, Any], device) -> dict[str, Any] | None:
    """The saved state, or None if there is no checkpoint; errors if options differ."""
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:
        raise ActscopeError(f"--resume: checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
    saved, current = state["identity"], _normalise(identity)
    if saved != current:
        changed = sorted(k for k in set(saved) | set(current) if saved.get(k) != current.get(k))
        details = ", ".join(f"{k}: {saved.get(k)!r} then, {current.get(k)!r} now" for k in changed[:3])
        raise ActscopeError(f"--resume: the checkpoint {path} was made with other options ({details})")
    state["grids"] = {slug: Grid.from_state_dict(g) for slug, g in state["grids"].items()}
    return state
