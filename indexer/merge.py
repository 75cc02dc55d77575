"""`actscope merge DIR --out FILE.duckdb`: the shard states of a state directory checked,
merged in a tree, and finalized into one index, as a single run would have written it.

The states must be every shard of one run, each once: a missing shard, a shard held by
two files, and states of other options, another split or another calibration are refused
by name. The model and SAEs are loaded again for what the index reads off their weights
(logit tables, the vocabulary); their contents must match the shards' identity.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actscope.indexer.config import IndexConfig
from actscope.indexer.errors import ActscopeError
from actscope.indexer.shard_state import StateHeader, check_same_run, joined, load_state, read_header

SEQUENCE_ROWS = 1 << 16  # sequences copied per insert


def find_states(state_dir: Path) -> list[StateHeader]:
    """The headers of every shard's state in `state_dir`, in shard order, checked to be
    the complete set of one run."""
    paths = sorted(Path(state_dir).glob("*.state"))
    if not paths:
        raise ActscopeError(
            f"{state_dir}: no shard states (*.state) here; write them with "
            f"actscope index ... --shard I/N --state-out {state_dir}"
        )
    headers = [read_header(path) for path in paths]
    counts = sorted({header.n_shards for header in headers})
    if len(counts) > 1:
        examples = ", ".join(next(h.path.name for h in headers if h.n_shards == n) for n in counts)
        raise ActscopeError(
            f"{state_dir} holds states of runs split into {' and '.join(map(str, counts))} shards ({examples}): "
            "keep one run's states in a directory"
        )
    n_shards = counts[0]
    holders: dict[int, list[StateHeader]] = defaultdict(list)
    for header in headers:
        first, last = header.shards
        if first != last:
            raise ActscopeError(f"{header.path.name} holds shards {first}-{last} merged: not a shard's state")
        holders[first].append(header)
    for index, held in sorted(holders.items()):
        if len(held) > 1:
            names = ", ".join(h.path.name for h in held)
            raise ActscopeError(f"shard {index} of {n_shards} is in more than one file ({names}): keep one of them")
    missing = [index for index in range(n_shards) if index not in holders]
    if missing:
        names = ", ".join(f"shard-{i}-of-{n_shards}.state" for i in missing)
        raise ActscopeError(
            f"{state_dir}: missing {len(missing)} of {n_shards} shards ({names}); "
            f"index them with --shard {missing[0]}/{n_shards} --state-out {state_dir} (and so on)"
        )
    ordered = [holders[index][0] for index in range(n_shards)]
    for header in ordered[1:]:
        check_same_run(ordered[0], header)
    for header in ordered:
        if not header.empty and not Path(sequences_of(header)).exists():
            raise ActscopeError(f"{header.path.name}: its sequences file {sequences_of(header)} is missing")
    return ordered


def sequences_of(header: StateHeader) -> Path:
    """A shard's sequences file, beside its state."""
    return header.path.with_name(header.path.name.removesuffix(".state") + ".sequences.duckdb")


def merge_tree(headers: list[StateHeader]) -> tuple[StateHeader, dict, dict]:
    """(header, grids, accumulators) of adjacent states merged, halves first: at most one
    state per level of the tree is held at a time."""
    if len(headers) == 1:
        return load_state(headers[0].path)
    middle = len(headers) // 2
    first, grids, merged = merge_tree(headers[:middle])
    second, _, other = merge_tree(headers[middle:])
    header = joined(first, second, first.path)
    for slug, accumulator in merged.items():
        accumulator.merge(other[slug])
    return header, grids, merged


def merge_states(
    state_dir: str, out: str, model: str | None = None, saes: tuple[str, ...] = (), device: str = "auto", quiet=False
) -> str:
    """Merge every shard state of `state_dir` into the index `out`; a summary line."""
    started = time.perf_counter()
    headers = find_states(Path(state_dir))
    header, _, accumulators = merge_tree(headers)
    return write_index(
        header,
        accumulators,
        headers,
        IndexOverrides(out=out, model=model, saes=saes, device=device, quiet=quiet),
        started,
        merged_by="actscope merge",
    )


@dataclass
class IndexOverrides:
    """What the merging machine sets: the output, and where the model and SAEs are here."""

    out: str
    model: str | None = None
    saes: tuple[str, ...] = ()
    device: str = "auto"
    quiet: bool = False

    def config(self, recorded: dict[str, Any]) -> IndexConfig:
        if self.saes and len(self.saes) != len(recorded["saes"]):
            raise ActscopeError(
                f"--sae: the shards indexed {len(recorded['saes'])} SAEs, {len(self.saes)} given: "
                "give every one of them, in the same order"
            )
        options = {**recorded, "out": self.out, "device": self.device, "quiet": self.quiet, "resume": False}
        if self.model is not None:
            options["model"] = self.model
        if self.saes:
            options["saes"] = list(self.saes)
        return IndexConfig(**options)


def write_index(
    header: StateHeader,
    accumulators: dict,
    shards: list[StateHeader],
    overrides: IndexOverrides,
    started: float,
    merged_by: str,
) -> str:
    """The index of merged state `header` (its accumulators), the sequences copied from
    the `shards`' files, finalized as run_index finalizes; a summary line."""
    from actscope.indexer.identity import describe_differences, identity_hash
    from actscope.indexer.phases import PhaseClock
    from actscope.indexer.run import _abandon, _out_of_space, finalize
    from actscope.indexer.shards import load_shard_run
    from actscope.indexer.store.writer import StoreWriter

    if header.n_sequences == 0:
        raise ActscopeError(
            f"--dataset {header.config['dataset']}: the corpus is empty or shorter than one sequence "
            f"of {header.config['ctx']} tokens"
        )
    config = overrides.config(header.config)
    run = load_shard_run(config)
    if identity_hash(run.identity) != header.identity_hash:
        details = describe_differences(header.identity, run.identity, "the shards", "here")
        raise ActscopeError(
            f"the model or SAEs loaded here are not the shards' ({details}): "
            "give their directories on this machine with --model and --sae"
        )
    writer = StoreWriter(config.tmp_path, run.model.spec.slug, fresh=True)
    try:
        for shard in shards:
            if not shard.empty:
                _copy_sequences(writer, sequences_of(shard))
        finalize(writer, run, accumulators, header.n_sequences, PhaseClock(started))
        writer.set_meta(
            "shards",
            {
                "count": header.n_shards,
                "merged_by": merged_by,
                "ranges": [[s.first_seq, s.n_sequences] for s in shards],
                "resumed_from": header.resumed_from,
            },
        )
        writer.finish(Path(config.out))
    except BaseException as exc:
        _abandon(writer, config)
        reason = _out_of_space(exc)
        if reason is not None:
            raise ActscopeError(f"out of disk space writing the index {config.out} ({reason})") from exc
        raise
    units = sum(s.n_units for s in run.sources)
    n_tokens = header.n_sequences * (config.ctx - 1)
    return (
        f"merged {header.n_shards} shards: {units} units ({', '.join(s.slug for s in run.sources)}) over "
        f"{n_tokens:,} tokens in {time.perf_counter() - started:.1f}s -> {config.out}"
    )


def _copy_sequences(writer, path: Path) -> None:
    """A shard's sequences into the index, a block of rows at a time."""
    import duckdb
    import pyarrow as pa

    con = duckdb.connect(str(path), read_only=True)
    try:
        reader = con.sql("SELECT model, seq, token_ids FROM sequences ORDER BY seq").to_arrow_reader(SEQUENCE_ROWS)
        for batch in reader:
            writer.write_table("sequences", pa.Table.from_batches([batch]))
            writer.wait()  # one block in memory at a time
    finally:
        con.close()
