"""The state file of a shard, or of several adjacent shards merged: accumulator state of
a contiguous range of the corpus's sequences, with what a merge must check.

A state holds the run's identity (identity.py), its options (the config; paths too, for
the merge to load the model from), the shards it covers, the sequences its range was
planned to hold and those it holds, the calibration digest, its sources (enough to build
empty accumulators without the model) and every source's accumulator state.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import torch

from actscope.indexer.config import IndexConfig
from actscope.indexer.errors import ActscopeError

FORMAT = "actscope-shard-state"
VERSION = 1


@dataclass
class StateHeader:
    """What a state says about itself, without its tensors."""

    path: Path
    identity: dict[str, Any]
    identity_hash: str
    config: dict[str, Any]
    n_shards: int
    shards: tuple[int, int]  # first and last shard it covers
    first_seq: int  # its range: sequences first_seq .. end_seq - 1, as planned
    end_seq: int
    n_sequences: int  # the sequences it holds end here (< end_seq: the corpus ended first)
    calibration: str  # digest of the grids every shard used
    sources: list[dict[str, Any]]  # kinds.Source rows
    resumed_from: list[int] = field(default_factory=list)  # sequences its shards resumed at

    @property
    def empty(self) -> bool:
        return self.n_sequences <= self.first_seq

    @property
    def complete(self) -> bool:
        """Its range holds every sequence it was planned to (the corpus did not end in it)."""
        return self.n_sequences >= self.end_seq

    def label(self) -> str:
        first, last = self.shards
        return self.path.name if first == last else f"shards {first}-{last} of {self.n_shards}"


def save_state(path: Path, header: StateHeader, grids: dict, accumulators: dict) -> None:
    """Atomically: written beside `path`, then renamed onto it."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        **{name: getattr(header, name) for name in _HEADER_FIELDS},
        "grids": {slug: grid.to("cpu").state_dict() for slug, grid in grids.items()},
        "accumulators": {slug: acc.state_dict() for slug, acc in accumulators.items()},
    }
    partial = Path(str(path) + f".{os.getpid()}.part")
    try:
        with open(partial, "wb") as file:
            torch.save(state, file)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


_HEADER_FIELDS = (
    "identity",
    "identity_hash",
    "config",
    "n_shards",
    "shards",
    "first_seq",
    "end_seq",
    "n_sequences",
    "calibration",
    "sources",
    "resumed_from",
)


def read_header(path: Path) -> StateHeader:
    """The header of a state file; its tensors are mapped, never read."""
    state = _load(path, mmap=True)
    return _header(path, state)


def _header(path: Path, state: dict) -> StateHeader:
    values = {name: state[name] for name in _HEADER_FIELDS}
    values["shards"] = tuple(values["shards"])
    return StateHeader(path=Path(path), **values)


def _load(path: Path, mmap: bool = False, device="cpu") -> dict:
    try:
        state = torch.load(path, map_location=device, weights_only=False, mmap=mmap)
    except Exception as exc:
        raise ActscopeError(f"{path}: not a readable shard state ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ActscopeError(f"{path}: not a shard state written by actscope index --shard")
    if state.get("version") != VERSION:
        raise ActscopeError(
            f"{path}: a shard state of format version {state.get('version')}; this actscope reads version {VERSION}"
        )
    return state


def load_state(path: Path, device="cpu") -> tuple[StateHeader, dict, dict]:
    """(header, grids, accumulators) of a state file, the accumulators on `device`."""
    from actscope.indexer.accumulate.grid import Grid
    from actscope.indexer.run import new_accumulators

    state = _load(path, device=device)
    header = _header(path, state)
    grids = {slug: Grid.from_state_dict(g) for slug, g in state["grids"].items()}
    # The options as recorded, unchecked: the paths in them need not exist where states merge.
    options = cast(IndexConfig, SimpleNamespace(**header.config))
    accumulators = new_accumulators(sources_of(header), grids, options, device)
    for slug, accumulator in accumulators.items():
        accumulator.load_state_dict(state["accumulators"][slug])
    return header, grids, accumulators


def sources_of(header: StateHeader) -> list:
    """The sources of a state, without their modules: enough to build their accumulators."""
    from actscope.indexer import kinds

    return [
        kinds.Source(
            row["slug"], row["hook_name"], kinds.get(row["kind"]), row["layer"], row["n_units"], json.loads(row["spec"])
        )
        for row in header.sources
    ]


def merge_pair(first: Path, second: Path, out: Path) -> StateHeader:
    """The states of two adjacent ranges, `first` before `second`, merged into `out`."""
    a, grids, merged = load_state(first)
    b, _, other = load_state(second)
    header = joined(a, b, out)
    for slug, accumulator in merged.items():
        accumulator.merge(other[slug])
    del other
    save_state(out, header, grids, merged)
    return header


def joined(a: StateHeader, b: StateHeader, out: Path) -> StateHeader:
    """The header of `a` and `b` merged (`a` the earlier range); refuses states that do
    not belong together."""
    check_same_run(a, b)
    if a.shards[1] + 1 != b.shards[0] or a.end_seq != b.first_seq:
        raise ActscopeError(f"{a.label()} and {b.label()} are not adjacent ranges of the corpus")
    if not a.complete and not b.empty:
        raise ActscopeError(
            f"{a.label()} ended at sequence {a.n_sequences}, before the end of its range ({a.end_seq}), "
            f"yet {b.label()} holds sequences from {b.first_seq}: the shards did not read the same corpus"
        )
    return StateHeader(
        path=Path(out),
        identity=a.identity,
        identity_hash=a.identity_hash,
        config=a.config,
        n_shards=a.n_shards,
        shards=(a.shards[0], b.shards[1]),
        first_seq=a.first_seq,
        end_seq=b.end_seq,
        n_sequences=a.n_sequences if b.empty else b.n_sequences,
        calibration=a.calibration,
        sources=a.sources,
        resumed_from=a.resumed_from + b.resumed_from,
    )


def check_same_run(a: StateHeader, b: StateHeader) -> None:
    """Refuses states of different runs: other options, weights, shard counts or calibration."""
    from actscope.indexer.identity import describe_differences

    if a.identity_hash != b.identity_hash:
        details = describe_differences(a.identity, b.identity, a.path.name, b.path.name)
        raise ActscopeError(f"{a.path.name} and {b.path.name} were made with other options ({details})")
    if a.n_shards != b.n_shards:
        raise ActscopeError(
            f"{a.path.name} is one of {a.n_shards} shards, {b.path.name} one of {b.n_shards}: "
            "states of differently split runs do not merge"
        )
    if a.calibration != b.calibration:
        raise ActscopeError(
            f"{a.path.name} and {b.path.name} were calibrated differently (their state directories' "
            "calibration.pt differ): index every shard into one --state-out directory"
        )
