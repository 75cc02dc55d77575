"""One shard of a run: a contiguous range of the corpus's sequences, indexed on its own
into a state that `actscope merge` (or the Ray driver, ray_run.py) merges with the others'.

A state directory holds every shard of one run:
  calibration.pt                 the run's calibration, made once: the band edges and top
                                 floors of the corpus's first tokens, exactly as a single
                                 run calibrates, and the number of sequences the ranges
                                 split. The first shard to get there writes it; the others
                                 read it (and are refused if it was made with other options)
  shard-I-of-N.state             shard I's accumulator state, once complete (shard_state.py)
  shard-I-of-N.sequences.duckdb  its sequences: the index's sequences table, its rows only
  shard-I-of-N.sequences.duckdb.tmp, .ckpt   while it runs: its partial file and checkpoint

The ranges are whole batches of the single run (the last one may be shorter), so every
shard feeds its accumulators the very batches a single run would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from actscope.indexer.config import IndexConfig
from actscope.indexer.errors import ActscopeError

CALIBRATION_FILE = "calibration.pt"


@dataclass(frozen=True)
class Shard:
    """Shard `index` (from 0) of `count`."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> Shard:
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ActscopeError(f"--shard {text}: expected I/N, e.g. 0/8 (I counts from 0)") from None
        if count < 1 or not 0 <= index < count:
            raise ActscopeError(f"--shard {text}: I must be 0 to N-1 and N at least 1")
        return cls(index, count)

    @property
    def name(self) -> str:
        return f"shard-{self.index}-of-{self.count}"

    def state_path(self, state_dir: Path) -> Path:
        return state_dir / f"{self.name}.state"

    def sequences_path(self, state_dir: Path) -> Path:
        return state_dir / f"{self.name}.sequences.duckdb"

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass
class Calibration:
    """What every shard of a run shares: the grids, and the sequences the ranges split."""

    identity: dict[str, Any]
    n_sequences: int
    grids: dict  # {slug: Grid}
    digest: str


def shard_range(n_sequences: int, shard: Shard, batch_size: int) -> tuple[int, int]:
    """(first, end) sequences of `shard`: its share of the run's batches."""
    n_batches = -(-n_sequences // batch_size)
    first = shard.index * n_batches // shard.count * batch_size
    end = (shard.index + 1) * n_batches // shard.count * batch_size
    return min(first, n_sequences), min(end, n_sequences)


def shard_config(config: IndexConfig, shard: Shard, state_dir: Path, end: int, resume: bool) -> IndexConfig:
    """The options of the shard's own stream: its sequences file as the output (so its
    partial file and checkpoint sit beside it), the stream ending at `end`."""
    return dataclasses.replace(
        config, out=str(shard.sequences_path(state_dir)), max_tokens=end * config.ctx, resume=resume
    )


def check_state_dir(text: str, option: str) -> Path:
    path = Path(text).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ActscopeError(f"{option} {text}: cannot create it ({exc.strerror or exc})") from exc
    if not path.is_dir():
        raise ActscopeError(f"{option} {text}: not a directory")
    if not os.access(path, os.W_OK):
        raise ActscopeError(f"{option} {text}: not writable")
    return path


@dataclass
class Streamed:
    """A shard's range, streamed: its accumulators, where its sequences end, and the
    sequence it resumed from, if it did."""

    accumulators: dict
    n_sequences: int
    resumed_from: list[int]


def run_shard(config: IndexConfig, shard: Shard, state_dir: Path, resume: bool) -> str:
    """Index shard `shard` of `config`'s corpus into `state_dir`; a summary line. With
    `resume`, a complete shard is left as it is and an interrupted one goes on from its
    checkpoint."""
    from actscope.indexer.checkpoint import remove_checkpoint
    from actscope.indexer.identity import identity_hash
    from actscope.indexer.memory import keep_freed_memory
    from actscope.indexer.run import new_accumulators
    from actscope.indexer.shard_state import StateHeader, read_header, save_state

    started = time.perf_counter()
    done_path = shard.state_path(state_dir)
    if resume and done_path.exists():
        header = read_header(done_path)  # a readable state, or a clear error
        if header.empty or shard.sequences_path(state_dir).exists():
            return f"shard {shard} was complete already -> {done_path}"
    keep_freed_memory()
    run = load_shard_run(config)
    calibration = shared_calibration(state_dir, run)
    first, end = shard_range(calibration.n_sequences, shard, config.batch_size)
    if first < end:
        streamed = _stream_range(run, calibration, shard, state_dir, first, end, resume)
    else:  # more shards than batches: nothing to index
        streamed = Streamed(new_accumulators(run.sources, calibration.grids, config, run.device), first, [])
    header = StateHeader(
        path=done_path,
        identity=run.identity,
        identity_hash=identity_hash(run.identity),
        config=config.to_dict(),
        n_shards=shard.count,
        shards=(shard.index, shard.index),
        first_seq=first,
        end_seq=end,
        n_sequences=streamed.n_sequences,
        calibration=calibration.digest,
        sources=[source.row() for source in run.sources],
        resumed_from=streamed.resumed_from,
    )
    save_state(done_path, header, calibration.grids, streamed.accumulators)
    remove_checkpoint(Path(str(shard.sequences_path(state_dir)) + ".ckpt"))
    held = streamed.n_sequences - first
    if held <= 0:
        return f"shard {shard}: no sequences (the corpus ends before sequence {first}) -> {done_path}"
    return (
        f"shard {shard}: sequences {first:,}-{streamed.n_sequences - 1:,} of {calibration.n_sequences:,} "
        f"in {time.perf_counter() - started:.1f}s -> {done_path}"
    )


def load_shard_run(config: IndexConfig):
    """run.load(config), its identity the content identity (identity.py) shards share."""
    from actscope.indexer.identity import content_identity
    from actscope.indexer.run import load

    run = load(config)
    identity = content_identity(config, run.model.spec, run.identity["sae_specs"])
    return dataclasses.replace(run, identity=identity)


def _stream_range(run, calibration: Calibration, shard: Shard, state_dir: Path, first: int, end: int, resume: bool):
    """Sequences first .. end-1 through the accumulators and into the shard's sequences
    file, with checkpoints on the way, as run_index streams a whole corpus."""
    from actscope.indexer.accumulate.calibrate import Step
    from actscope.indexer.checkpoint import load_checkpoint, remove_checkpoint
    from actscope.indexer.run import Progress, _abandon, _out_of_space, batches, new_accumulators, stream_all
    from actscope.indexer.store.writer import StoreWriter

    part = shard_config(run.config, shard, state_dir, end, resume)
    part_run = dataclasses.replace(run, config=part)
    state = load_checkpoint(part.checkpoint_path, run.identity, run.device) if resume else None
    if state is not None and not part.tmp_path.exists() and Path(part.out).exists():
        os.replace(part.out, part.tmp_path)  # killed once its file was complete, before its state was saved
    writer = StoreWriter(part.tmp_path, run.model.spec.slug, fresh=state is None)
    try:
        accumulators = new_accumulators(run.sources, calibration.grids, run.config, run.device)
        done = Progress(first // run.config.batch_size, first)
        resumed_from: list[int] = []
        if state is not None:
            for slug, acc in accumulators.items():
                acc.load_state_dict(state["accumulators"][slug])
            done = Progress(state["batches_done"], state["n_sequences"])
            writer.rewind(done.n_sequences)
            resumed_from = [done.n_sequences]
        else:
            remove_checkpoint(part.checkpoint_path)
            Path(part.out).unlink(missing_ok=True)
        steps = (Step([batch], batch.tokens, batch.first_seq) for batch in batches(part_run, first))
        done = stream_all(part_run, steps, accumulators, calibration.grids, writer, done)
        writer.finish(Path(part.out))  # the checkpoint stays until the state is saved
    except BaseException as exc:
        _abandon(writer, part)
        reason = _out_of_space(exc)
        if reason is not None:
            raise ActscopeError(
                f"out of disk space writing shard {shard} in {state_dir} ({reason}): "
                "free some space, then run it again with --resume"
            ) from exc
        raise
    return Streamed(accumulators, done.n_sequences, resumed_from)


def shared_calibration(state_dir: Path, run) -> Calibration:
    """The run's calibration from the state directory, made and written there first if no
    shard has yet; refused if it was made with other options."""
    path = state_dir / CALIBRATION_FILE
    if not path.exists():
        _publish(path, _calibrate(run))
    return _read_calibration(path, run.identity)


def _calibrate(run) -> dict[str, Any]:
    """The calibration of a single run of the same options: the same first batches."""
    from actscope.indexer.accumulate.calibrate import calibrate
    from actscope.indexer.identity import identity_hash
    from actscope.indexer.run import batches

    config = run.config
    n_sequences = run.max_sequences if run.max_sequences is not None else count_sequences(run)
    with contextlib.closing(cast(Generator, batches(run))) as stream:  # its prefetch thread stopped after
        grids, consumed = calibrate(
            run.runner, stream, run.sources, config.calibration_tokens, config.hist_bins, config.top_k
        )
    del consumed  # a single run replays these activations; a shard runs its batches again
    saved = {slug: grid.to("cpu").state_dict() for slug, grid in grids.items()}
    return {
        "identity": run.identity,
        "identity_hash": identity_hash(run.identity),
        "n_sequences": n_sequences,
        "grids": saved,
        "digest": _grids_digest(saved, n_sequences),
    }


def count_sequences(run) -> int:
    """The corpus's sequences, from tokenising all of it (the pre-pass of a run without
    --max-tokens)."""
    from actscope.indexer.corpus.batches import count_sequences as count
    from actscope.indexer.corpus.documents import iter_documents

    config, model = run.config, run.model
    if not config.quiet:
        print(f"counting the sequences of --dataset {config.dataset} (no --max-tokens)", file=sys.stderr)
    documents = iter_documents(config.dataset, config.text_column, config.split)
    n_sequences = count(documents, model.tokenizer, eos_token_id=model.eos_token_id, ctx=config.ctx)
    if n_sequences == 0:
        raise ActscopeError(
            f"--dataset {config.dataset}: the corpus is empty or shorter than one sequence of {config.ctx} tokens"
        )
    return n_sequences


def _grids_digest(grids: dict[str, dict], n_sequences: int) -> str:
    digest = hashlib.sha256(str(n_sequences).encode())
    for slug in sorted(grids):
        digest.update(slug.encode())
        for name, value in sorted(grids[slug].items()):
            digest.update(name.encode())
            if isinstance(value, torch.Tensor):
                digest.update(value.contiguous().numpy().tobytes())
            else:
                digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def _publish(path: Path, calibration: dict[str, Any]) -> None:
    """Write `path` unless another shard has meanwhile: the first one written stays, so
    every shard uses the same grids."""
    partial = Path(str(path) + f".{os.getpid()}.part")
    try:
        with open(partial, "wb") as file:
            torch.save(calibration, file)
        try:
            os.link(partial, path)  # fails if it exists: creation is atomic
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            if not path.exists():
                os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _read_calibration(path: Path, identity: dict[str, Any]) -> Calibration:
    from actscope.indexer.accumulate.grid import Grid
    from actscope.indexer.identity import describe_differences, identity_hash

    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise ActscopeError(f"{path} is unreadable ({exc}); delete it to calibrate again") from exc
    if saved["identity_hash"] != identity_hash(identity):
        details = describe_differences(saved["identity"], identity, path.name, "this shard")
        raise ActscopeError(
            f"{path} was made by a run with other options ({details}): give each run its own state directory"
        )
    grids = {slug: Grid.from_state_dict(grid) for slug, grid in saved["grids"].items()}
    return Calibration(saved["identity"], saved["n_sequences"], grids, saved["digest"])
