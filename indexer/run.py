"""One indexing run, top to bottom: load -> calibrate -> stream -> finalize."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from actscope import __version__
from actscope.indexer.config import IndexConfig
from actscope.indexer.errors import ActscopeError
from actscope.indexer.phases import PhaseClock

SEQUENCE_FLUSH_BATCHES = 64  # token batches kept in memory before they go to the file
DOCUMENT_PREFETCH = 64  # documents read ahead: two of the tokenizer's groups (corpus/batches.py)


@dataclass
class Loaded:
    """What a run works with once loaded: the model, its sources, the runner, and the
    identity a checkpoint of the run must match."""

    config: IndexConfig
    device: str
    model: Any  # model.loading.LoadedModel
    sources: list  # [kinds.Source]
    runner: Any  # model.runner.ActivationRunner
    identity: dict[str, Any]

    @property
    def max_sequences(self) -> int | None:
        return self.config.max_tokens // self.config.ctx if self.config.max_tokens else None


@dataclass
class Progress:
    """How far the stream has come: batches completed, and the sequences they hold."""

    batches_done: int = 0
    n_sequences: int = 0


def run_index(config: IndexConfig) -> str:
    from actscope.indexer.checkpoint import load_checkpoint, remove_checkpoint
    from actscope.indexer.groups import plan_groups
    from actscope.indexer.memory import keep_freed_memory
    from actscope.indexer.store.writer import DamagedPartialIndex, StoreWriter

    clock = PhaseClock()
    started = clock.started
    keep_freed_memory()  # the batches' tensors reuse resident memory instead of faulting in fresh pages
    with clock.phase("load"):
        run = load(config)
    plan = plan_groups(run.sources, config, config.max_state_gb) if config.max_state_gb else None
    if plan is not None:
        print(plan.describe(), file=sys.stderr)
        if plan.passes > 1 and config.resume:
            raise ActscopeError(
                "--resume: a run in several groups (--max-state-gb) keeps no checkpoint; run it again without --resume"
            )
    state = None
    if config.resume:
        state = load_checkpoint(config.checkpoint_path, run.identity, run.device)
        if state is None:
            print(f"no checkpoint at {config.checkpoint_path}: starting from the beginning", file=sys.stderr)
    # The file is opened before the first forward pass: the first index a process writes
    # starts its DuckDB instance, which trims the C heap (see store/writer.py); done now,
    # that hands back none of the memory the forward passes page in.
    rewrite = False  # the checkpoint's sequences must be written again (the partial file was lost)
    with clock.phase("open file"):
        try:
            writer = StoreWriter(config.tmp_path, run.model.spec.slug, fresh=state is None)
        except DamagedPartialIndex as exc:
            print(f"--resume: {exc}; writing it again from the corpus", file=sys.stderr)
            writer = StoreWriter(config.tmp_path, run.model.spec.slug, fresh=True)
            rewrite = True
    try:
        if plan is not None and plan.passes > 1:
            remove_checkpoint(config.checkpoint_path)
            band_levels, n_sequences, reservoir = run_groups(run, plan, writer, clock)
            last_batch = time.perf_counter()
            finalize(writer, run, {}, n_sequences, clock, band_levels, reservoir)
        else:
            done, accumulators = _run_whole(run, state, writer, clock, rewrite)
            last_batch = time.perf_counter()
            finalize(writer, run, accumulators, done.n_sequences, clock)
            n_sequences = done.n_sequences
        with clock.phase("last writes"):
            writer.finish(Path(config.out), before_rename=partial(remove_checkpoint, config.checkpoint_path))
        clock.add("after the last batch", time.perf_counter() - last_batch)
    except BaseException as exc:
        _abandon(writer, config)
        reason = _out_of_space(exc)
        if reason is not None:
            then = (
                "run the same command with --resume to go on from the last checkpoint"
                if config.checkpoint_path.exists()
                else "run it again"
            )
            raise ActscopeError(
                f"out of disk space writing the index beside --out {config.out} ({reason}): free some space, then {then}"
            ) from exc
        raise
    if not config.quiet:
        print(_time_outside_batches(clock), file=sys.stderr)
    n_tokens = n_sequences * (config.ctx - 1)
    units = sum(s.n_units for s in run.sources)
    return (
        f"indexed {units} units ({', '.join(s.slug for s in run.sources)}) over {n_tokens:,} tokens "
        f"in {time.perf_counter() - started:.1f}s -> {config.out}"
    )


def _run_whole(
    run: Loaded, state: dict | None, writer, clock: PhaseClock, rewrite: bool = False
) -> tuple[Progress, dict]:
    """Every source in one pass over the corpus, from the checkpoint `state` if resumed
    (`rewrite`: into a new file, so the sequences the checkpoint covers are written again)."""
    from actscope.indexer.accumulate.calibrate import calibrate
    from actscope.indexer.checkpoint import remove_checkpoint

    config = run.config
    stream = batches(run)
    calibrated: list = []
    if state is not None:
        grids = state["grids"]
    else:
        with clock.phase("calibration"):
            grids, calibrated = calibrate(
                run.runner, stream, run.sources, config.calibration_tokens, config.hist_bins, config.top_k
            )
    with clock.phase("accumulators"):  # their empty state: hundreds of MB filled at 100k units
        accumulators = new_accumulators(run.sources, grids, config, run.device)
    done = Progress()
    if state is not None:
        for slug, acc in accumulators.items():
            acc.load_state_dict(state["accumulators"][slug])
        done = Progress(state["batches_done"], state["n_sequences"])
        writer.rewind(done.n_sequences)
    else:
        remove_checkpoint(config.checkpoint_path)
    with clock.phase("batches"):
        done = stream_all(run, steps(run, calibrated, stream), accumulators, grids, writer, done, rewrite)
    _check_not_empty(config, done.n_sequences)
    return done, accumulators


def _check_not_empty(config: IndexConfig, n_sequences: int) -> None:
    if n_sequences == 0:
        raise ActscopeError(
            f"--dataset {config.dataset}: the corpus is empty or shorter than one sequence of {config.ctx} tokens"
        )


@dataclass
class GroupResult:
    """What one group's pass over the corpus leaves: its sources' accumulators."""

    accumulators: dict
    n_sequences: int


class _SequencesWritten:
    """The sequence writer of every group after the first: the first wrote them."""

    def add_sequences(self, first_seq: int, tokens) -> None:
        pass

    def flush(self, wait: bool = False) -> None:
        pass


def run_groups(run: Loaded, plan, writer, clock: PhaseClock) -> tuple[dict, int, dict | None]:
    """Each group of `plan` in its own pass over the corpus, its unit tables and
    fingerprints written (and its state dropped) before the next starts; ({slug: band
    levels}, sequences, the reservoir's description)."""
    from actscope.indexer.final_tables import write_unit_tables

    levels: dict[str, list] = {}
    n_sequences = None
    reservoir: dict | None = None
    for number, group in enumerate(plan.groups):
        if not run.config.quiet:
            print(f"group {number + 1} of {plan.passes}: {group.n_units:,} units", file=sys.stderr)
        result = run_group(run, group, writer if number == 0 else _SequencesWritten(), clock)
        if n_sequences is not None and result.n_sequences != n_sequences:
            raise ActscopeError(
                f"--dataset {run.config.dataset}: the corpus changed between two groups' passes "
                f"({n_sequences} sequences, then {result.n_sequences})"
            )
        n_sequences = result.n_sequences
        # The last group's unit tables are written after the last batch, the others' between passes.
        with clock.phase("unit tables" if number == plan.passes - 1 else "between passes"):
            write_unit_tables(
                writer, run.model.spec.slug, group.sources, result.accumulators, run.model.model, run.config.ctx
            )
            described = _write_fingerprints(writer, run, group.sources, result.accumulators, positions=number == 0)
            if number == 0:
                reservoir = described
        levels.update({slug: list(acc.grid.levels) for slug, acc in result.accumulators.items()})
        del result  # the next group's state takes its place
    assert n_sequences is not None
    return levels, n_sequences, reservoir


def run_group(run: Loaded, group, sequences, clock: PhaseClock | None = None) -> GroupResult:
    """One group's pass over the whole corpus: calibration and accumulation of its sources
    only, each exactly as in a run of every source (a function of the group alone, so a
    scheduler can run groups as tasks). `sequences` gets the corpus's token batches (the
    index's writer, or a writer that drops them)."""
    from dataclasses import replace

    from actscope.indexer.accumulate.calibrate import calibrate
    from actscope.indexer.model.runner import ActivationRunner

    clock = clock or PhaseClock()
    config = replace(run.config, checkpoint_every=0)  # a group's state alone is no checkpoint of the run
    runner = ActivationRunner(run.model.model, group.sources, reuse_outputs=True)
    part = replace(run, config=config, sources=group.sources, runner=runner)
    stream = batches(part)
    with clock.phase("calibration"):
        grids, calibrated = calibrate(
            runner, stream, part.sources, config.calibration_tokens, config.hist_bins, config.top_k
        )
    with clock.phase("accumulators"):
        accumulators = new_accumulators(part.sources, grids, config, run.device)
    with clock.phase("batches"):
        done = stream_all(part, steps(part, calibrated, stream), accumulators, grids, sequences, Progress())
    _check_not_empty(config, done.n_sequences)
    return GroupResult(accumulators, done.n_sequences)


def _time_outside_batches(clock: PhaseClock) -> str:
    """The log's line of where the time outside the batches went."""
    before = clock.summary(["load", "open file", "calibration", "accumulators", "between passes"])
    after = clock.summary(["unit tables", "fingerprints", "logit tables", "vocabulary", "writes", "last writes"])
    last = clock.seconds.get("after the last batch", 0.0)
    return f"time outside the batches: {before}; after the last batch {last:.1f} s ({after})"


def load(config: IndexConfig) -> Loaded:
    """The SAEs (first: they say how the model must be processed), the model, the sources."""
    from actscope.indexer import kinds
    from actscope.indexer.kinds.direction import parse_spec
    from actscope.indexer.model.loading import load_model, pick_device, resolve_model_spec
    from actscope.indexer.model.runner import ActivationRunner
    from actscope.indexer.model.saes import load_sae, resolve_sae_spec, sae_processing

    for text in config.directions:
        parse_spec(text)  # a malformed option fails before anything loads
    device = pick_device(config.device)
    model_spec = resolve_model_spec(config.model, config.name)
    sae_specs = [resolve_sae_spec(text) for text in config.saes]
    saes = [load_sae(spec, "cpu") for spec in sae_specs]
    model_spec.processing = sae_processing(saes)
    loaded = load_model(model_spec, device)
    if config.ctx > loaded.n_ctx:
        raise ActscopeError(f"--ctx {config.ctx} is larger than the model's context of {loaded.n_ctx} tokens")
    request = kinds.SourceRequest(
        config.neuron_hooks,
        config.no_neurons,
        list(zip(sae_specs, saes)),
        config.directions,
        config.seed,
        head_metrics=config.heads,
        dla=config.dla,
    )
    sources = kinds.build_sources(loaded.model, request)
    runner = ActivationRunner(loaded.model, sources, reuse_outputs=True)  # each batch consumed before the next
    identity = {**config.identity(), "model_spec": model_spec.to_dict(), "sae_specs": sae_specs}
    return Loaded(config, device, loaded, sources, runner, identity)


def batches(run: Loaded, first_sequence: int = 0) -> Iterator:
    """The corpus as token batches [batch, ctx] (from `first_sequence` on: a shard's).

    On the CPU the documents are read in the background (a Hub stream waits on the
    network there) but tokenised here, between forward passes: a tokenizer thread beside
    torch's workers preempts one of them, and the others wait for it. With a GPU the CPU
    is free while it works: the tokenizer then runs beside the forward passes.
    """
    from actscope.indexer.corpus.batches import iter_batches
    from actscope.indexer.corpus.documents import iter_documents
    from actscope.indexer.corpus.prefetch import prefetch

    config, model = run.config, run.model
    documents = iter_documents(config.dataset, config.text_column, config.split)
    on_cpu = run.device == "cpu"
    stream = iter_batches(
        prefetch(documents, depth=DOCUMENT_PREFETCH) if on_cpu else documents,
        model.tokenizer,
        bos_token_id=model.bos_token_id,
        eos_token_id=model.eos_token_id,
        ctx=config.ctx,
        batch_size=config.batch_size,
        max_sequences=run.max_sequences,
        first_sequence=first_sequence,
    )
    return stream if on_cpu else prefetch(stream)


def steps(run: Loaded, calibrated: list, stream: Iterator) -> Iterator:
    """Accumulation steps: the calibration batches first, without a second forward pass,
    then every other batch of the stream."""
    from actscope.indexer.accumulate.calibrate import Step, replay_steps

    dense = frozenset(s.slug for s in run.sources if not s.kind.sparse)
    return itertools.chain(
        replay_steps(calibrated, run.runner.output_buffer, dense),
        (Step([batch], batch.tokens, batch.first_seq) for batch in stream),
    )


def stream_all(
    run: Loaded, all_steps: Iterator, accumulators: dict, grids: dict, writer, done: Progress, rewrite: bool = False
) -> Progress:
    """Every step through the accumulators; sequences to the file, checkpoints on the way.
    The steps a resumed run's checkpoint already holds are skipped (with `rewrite`, their
    sequences still go to the file)."""
    import torch
    from tqdm import tqdm

    from actscope.indexer.checkpoint import save_checkpoint

    config = run.config
    total = run.max_sequences * config.ctx if run.max_sequences else None
    progress = tqdm(
        total=total,
        initial=done.n_sequences * config.ctx,
        unit="tok",
        unit_scale=True,
        disable=config.quiet,
        desc="indexing",
        file=sys.stderr,
        dynamic_ncols=True,
    )
    with torch.inference_mode():
        for step in all_steps:
            if step.batches and step.batches[-1].index < done.batches_done:
                if rewrite:
                    for batch in step.batches:
                        writer.add_sequences(batch.first_seq, batch.tokens.numpy())
                        if _passes_multiple(batch.index, batch.index + 1, SEQUENCE_FLUSH_BATCHES):
                            writer.flush()
                continue  # already in the checkpoint
            tokens = step.tokens.to(run.device)
            if step.acts is None:  # each source accumulated as soon as the forward pass yields it
                consume = accumulate_each(accumulators, tokens, step.first_seq, config.seed, step.tokens)
                run.runner(tokens, consume=consume)
            else:
                accumulate(
                    accumulators, run.sources, step.acts, tokens, step.first_seq, config.seed, step.top_ks, step.tokens
                )
            if not step.batches:
                continue
            for batch in step.batches:
                writer.add_sequences(batch.first_seq, batch.tokens.numpy())
                progress.update(batch.tokens.numel())
            before = done.batches_done
            last = step.batches[-1]
            done = Progress(last.index + 1, last.first_seq + last.tokens.shape[0])
            if config.checkpoint_every and _passes_multiple(before, done.batches_done, config.checkpoint_every):
                writer.flush(wait=True)  # the checkpoint must not get ahead of the file
                save_checkpoint(
                    config.checkpoint_path, run.identity, done.batches_done, done.n_sequences, grids, accumulators
                )
            elif _passes_multiple(before, done.batches_done, SEQUENCE_FLUSH_BATCHES):
                writer.flush()  # memory stays flat however long the corpus
    progress.close()
    return done


def _passes_multiple(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in before+1 .. after: a step of the run can
    complete several batches (the calibration's), and must not skip a checkpoint."""
    return after // every > before // every


def _out_of_space(exc: BaseException) -> str | None:
    """The system's reason if a write failed for want of space (a full disk, a quota, a
    file size limit), else None. DuckDB reports these in its own errors' text."""
    import errno
    import os

    reasons = [os.strerror(code) for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)]
    # torch.save's zip writer answers a full disk with a RuntimeError of its own while
    # closing, the OSError as its context: look down the chain.
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is short; never follow a cycle
        if seen is None:
            break
        if isinstance(seen, OSError):
            if seen.errno is not None and os.strerror(seen.errno) in reasons:
                return os.strerror(seen.errno)
        elif "duckdb" in type(seen).__module__:
            found = next((reason for reason in reasons if reason in str(seen)), None)
            if found:
                return found
        seen = seen.__cause__ or seen.__context__
    return None


def _abandon(writer, config: IndexConfig) -> None:
    """After a failed run: the file closed (an error of its own dropped: the run's is the
    one to report) and deleted with its write-ahead log, unless a checkpoint can resume
    from it."""
    from actscope.indexer.store.writer import delete_index_file

    with contextlib.suppress(Exception):
        writer.close()
    if not config.checkpoint_path.exists():
        delete_index_file(config.tmp_path)


def new_accumulators(sources, grids, config: IndexConfig, device) -> dict:
    """One empty accumulator per source, on `device`: sparse kinds accumulate their firing
    entries only."""
    from actscope.indexer.accumulate.dense import DenseAccumulator
    from actscope.indexer.accumulate.sparse import SparseAccumulator

    common = dict(
        top_k=config.top_k, band_size=config.band_size, window=config.window, device=device, reservoir=config.reservoir
    )
    return {
        source.slug: (SparseAccumulator if source.kind.sparse else DenseAccumulator)(
            source.n_units, grids[source.slug], tail=source.kind.tail, **common
        )
        for source in sources
    }


def accumulate(
    accumulators: dict,
    sources,
    acts: dict,
    tokens,
    first_seq: int,
    seed: int,
    top_ks: dict | None = None,
    host_tokens=None,
) -> None:
    """The accumulator of every source in `acts` updated with its activations of `tokens`
    [batch, ctx] (and, for TopK SAEs, their top-k in `top_ks`, as ActivationRunner passes it)."""
    update = accumulate_each(accumulators, tokens, first_seq, seed, host_tokens)
    for source in sources:
        if source.slug in acts:
            update(source.slug, acts[source.slug], (top_ks or {}).get(source.slug))


def accumulate_each(accumulators: dict, tokens, first_seq: int, seed: int, host_tokens=None) -> Callable[..., None]:
    """update(slug, activations, top_k=None): one source's accumulator updated for `tokens`
    [batch, ctx] (`host_tokens`: the same on the host, if `tokens` are on a GPU); `top_k` as
    ActivationRunner passes it to `consume`."""
    import torch

    from actscope.indexer.accumulate.reservoir import ReservoirBatch
    from actscope.indexer.accumulate.sampling import token_keys

    batch, ctx = tokens.shape
    seq_ids = first_seq + torch.arange(batch, device=tokens.device)
    keys = token_keys(seq_ids[:, None] * ctx + torch.arange(ctx, device=tokens.device)[None, :], seed)
    # The step's positions as the fingerprint reservoirs see them (on the host), once for all sources.
    with_fingerprints = any(acc.fingerprints is not None for acc in accumulators.values())
    positions = (
        ReservoirBatch.of(tokens if host_tokens is None else host_tokens, first_seq, seed)
        if with_fingerprints
        else None
    )

    # The row order the compiled (CPU) passes visit, computed once for all sources (once
    # more for sources that leave the last positions out).
    orders: dict[int, Any] = {}

    def order_of(tail: int):
        if tokens.device.type != "cpu":
            return None
        if tail not in orders:
            from actscope.indexer.accumulate.kernels_cpu import key_order

            orders[tail] = key_order(keys, tail)
        return orders[tail]

    def update(slug: str, acts, top_k=None) -> None:
        accumulator = accumulators[slug]
        order = order_of(accumulator.tail)
        if top_k is None:
            accumulator.update(acts, first_seq, keys, order=order)
        else:
            accumulator.update(acts, first_seq, keys, top_k=top_k, order=order)
        if accumulator.fingerprints is not None:
            assert positions is not None, "made when any accumulator keeps fingerprints"
            accumulator.fingerprints.update(acts, positions)

    return update


def finalize(
    writer,
    run: Loaded,
    accumulators: dict,
    n_sequences: int,
    clock: PhaseClock,
    band_levels: dict | None = None,
    reservoir_of_groups: dict | None = None,
) -> None:
    """Everything but the sequences, into the file: the unit tables of `accumulators` (a
    grouped run wrote its groups' already and passes none, with each source's
    `band_levels`), then the facts read off the weights, each inserted by the writer's
    thread while the next is computed."""
    from concurrent.futures import ThreadPoolExecutor

    from actscope.indexer.corpus.documents import describe_corpus
    from actscope.indexer.final_tables import (
        decoder_table,
        direction_table,
        vocab_table,
        write_logit_tables,
        write_unit_tables,
    )

    config, loaded, sources = run.config, run.model, run.sources
    model, slug = loaded.model, loaded.spec.slug
    reservoir = reservoir_of_groups
    levels = dict(band_levels or {})
    levels.update({name: list(acc.grid.levels) for name, acc in accumulators.items()})
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="actscope-vocab") as helper:
        vocab = helper.submit(vocab_table, loaded)  # decoded while the matmuls below hold no GIL
        if accumulators:
            with clock.phase("unit tables"):
                write_unit_tables(writer, slug, sources, accumulators, model, config.ctx)
            with clock.phase("fingerprints"):
                reservoir = _write_fingerprints(writer, run, sources, accumulators, positions=True)
        with clock.phase("logit tables"):
            write_logit_tables(writer, slug, sources, model)
        directions = direction_table(slug, sources)
        if directions is not None:
            writer.write_table("directions", directions)
        decoders = decoder_table(slug, sources, model)
        if decoders is not None:
            writer.write_table("decoders", decoders)
        writer.write_rows(
            "sources", [{**source.row(), "model": slug, "band_levels": levels[source.slug]} for source in sources]
        )
        with clock.phase("vocabulary"):
            writer.write_table("vocab", vocab.result())
    cfg = model.cfg
    writer.write_rows(
        "models",
        [
            {
                "model": slug,
                "spec": json.dumps(loaded.spec.to_dict()),
                "processing": json.dumps(loaded.spec.processing),
                "loader": json.dumps(loaded.loader),
                "n_layers": int(cfg.n_layers),
                "d_model": int(cfg.d_model),
                "d_vocab": int(cfg.d_vocab),
                "n_ctx": int(cfg.n_ctx),
                "ctx": config.ctx,
                "bos_token_id": loaded.bos_token_id,
                "eos_token_id": loaded.eos_token_id,
                "n_sequences": n_sequences,
                "n_tokens": n_sequences * (config.ctx - 1),
            }
        ],
    )
    with clock.phase("writes"):
        writer.wait()
    writer.set_meta(
        "package_version",
        __version__,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        run_config=config.to_dict(),
        dataset=config.dataset,
        corpus=describe_corpus(config.dataset, config.text_column, config.split).to_dict(),
        elapsed_seconds=round(time.perf_counter() - clock.started, 2),
        phase_seconds=clock.rounded(),
        reservoir=reservoir,
    )


def _write_fingerprints(writer, run: Loaded, sources, accumulators: dict, positions: bool) -> dict[str, Any] | None:
    """The fingerprints of `sources` (and, with `positions`, the reservoir's positions)
    into the file; returns the reservoir's description for the meta table (None without
    fingerprints). A run in groups writes each group's, the positions with the first."""
    import pyarrow as pa

    from actscope.indexer.accumulate.finalize import fingerprint_rows, reservoir_rows
    from actscope.indexer.accumulate.reservoir import RESERVOIR_TAIL

    config, slug = run.config, run.model.spec.slug
    kept = [(source, accumulators[source.slug]) for source in sources if source.slug in accumulators]
    if not kept or kept[0][1].fingerprints is None:
        return None
    rows = reservoir_rows(slug, kept[0][1], config.ctx)
    if positions:
        writer.write_table("reservoir", rows)
    writer.write_table(
        "fingerprints",
        pa.concat_tables([fingerprint_rows(slug, source.slug, acc, source.kind.sparse) for source, acc in kept]),
    )
    return {"n": rows.num_rows, "capacity": config.reservoir, "seed": config.seed, "tail": RESERVOIR_TAIL}
