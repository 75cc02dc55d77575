"""One indexing run: load, calibrate, stream every batch through all accumulators, write."""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from . import __version__
from .config import IndexConfig
from .errors import ActscopeError

SEQUENCE_FLUSH_BATCHES = 64  # token batches kept in memory before they go to the file
DOCUMENT_PREFETCH = 64  # documents read ahead: two of the tokenizer's groups (corpus.py)


def run_index(config: IndexConfig) -> str:
    import torch
    from tqdm import tqdm

    from .activations import ActivationRunner
    from .calibrate import calibrate, replay_steps
    from .checkpoint import load_checkpoint, save_checkpoint
    from .corpus import iter_batches, iter_documents
    from .model import load_model, pick_device, resolve_model_spec
    from .prefetch import prefetch
    from .sources import load_sae, neuron_sources, resolve_sae_spec, sae_processing, sae_sources
    from .store_writer import StoreWriter

    from .memory import keep_freed_memory

    started = time.perf_counter()
    keep_freed_memory()  # the batches' tensors reuse resident memory instead of faulting in fresh pages
    device = pick_device(config.device)
    model_spec = resolve_model_spec(config.model)
    sae_specs = [resolve_sae_spec(text) for text in config.saes]
    saes = [load_sae(spec, "cpu") for spec in sae_specs]
    model_spec.processing = sae_processing(saes)
    loaded = load_model(model_spec, device)
    model = loaded.model
    if config.ctx > loaded.n_ctx:
        raise ActscopeError(f"--ctx {config.ctx} is larger than the model's context of {loaded.n_ctx} tokens")
    sources = [] if config.no_neurons else neuron_sources(model, config.neuron_hooks)
    sources += sae_sources(model, saes, sae_specs, {s.slug for s in sources})
    runner = ActivationRunner(model, sources, reuse_outputs=True)  # each batch consumed before the next
    max_sequences = config.max_tokens // config.ctx if config.max_tokens else None

    def batches():
        documents = iter_documents(config.dataset, config.text_column, config.split)
        # On the CPU the documents are read in the background (a Hub stream waits on the
        # network there) but tokenised here, between forward passes: a tokenizer thread
        # beside torch's workers preempts one of them and the other waits for it at the end
        # of each parallel region, which cost the forward passes 1-4x the tokenizer's own
        # CPU time, the more the busier the machine. With a GPU the CPU is free while it
        # works: the tokenizer then runs beside the forward passes.
        on_cpu = device == "cpu"
        stream = iter_batches(prefetch(documents, depth=DOCUMENT_PREFETCH) if on_cpu else documents,
                              loaded.tokenizer, bos_token_id=loaded.bos_token_id,
                              eos_token_id=loaded.eos_token_id, ctx=config.ctx, batch_size=config.batch_size,
                              max_sequences=max_sequences)
        return stream if on_cpu else prefetch(stream)

    identity = {**config.identity(), "model_spec": model_spec.to_dict(), "sae_specs": sae_specs}
    state = None
    if config.resume:
        state = load_checkpoint(config.checkpoint_path, identity, device)
        if state is None:
            print(f"no checkpoint at {config.checkpoint_path}: starting from the beginning", file=sys.stderr)
    # The file is opened before the first forward pass: the first index a process writes
    # starts its DuckDB instance, which trims the C heap (see store_writer.py); done now,
    # that hands back none of the memory the forward passes page in.
    writer = StoreWriter(config.tmp_path, model_spec.slug, fresh=state is None)
    try:
        stream = batches()
        if state is not None:
            grids, calibrated = state["grids"], []
        else:
            grids, calibrated = calibrate(runner, stream, sources, config.calibration_tokens, config.hist_bins,
                                          config.top_k)
        accumulators = new_accumulators(sources, grids, config, device)
        batches_done, n_sequences = 0, 0
        if state is not None:
            for slug, acc in accumulators.items():
                acc.load_state_dict(state["accumulators"][slug])
            batches_done, n_sequences = state["batches_done"], state["n_sequences"]
            writer.truncate_sequences(n_sequences)
        else:
            config.checkpoint_path.unlink(missing_ok=True)

        total = max_sequences * config.ctx if max_sequences else None
        progress = tqdm(total=total, initial=n_sequences * config.ctx, unit="tok", unit_scale=True,
                        disable=config.quiet, desc="indexing", file=sys.stderr, dynamic_ncols=True)
        neuron_slugs = frozenset(s.slug for s in sources if s.kind == "neuron")
        # Steps (batches completed, tokens, first_seq, activations, top_ks): the calibration
        # batches first, without a second forward pass, then the rest.
        steps = itertools.chain(replay_steps(calibrated, runner.output_buffer, neuron_slugs),
                                (([batch], batch.tokens, batch.first_seq, None, None) for batch in stream))
        with torch.inference_mode():
            for done, step_tokens, first_seq, acts, top_ks in steps:
                if done and done[-1].index < batches_done:
                    continue  # already in the checkpoint
                tokens = step_tokens.to(device)
                if acts is None:  # each source accumulated as soon as the forward pass yields it
                    update = accumulate_each(accumulators, tokens, first_seq, config.seed)
                    runner(tokens, consume=update)
                else:
                    accumulate(accumulators, sources, acts, tokens, first_seq, config.seed, top_ks)
                if not done:
                    continue
                for batch in done:
                    writer.add_sequences(batch.first_seq, batch.tokens.numpy())
                    progress.update(batch.tokens.numel())
                before, batches_done = batches_done, done[-1].index + 1
                n_sequences = done[-1].first_seq + done[-1].tokens.shape[0]
                if config.checkpoint_every and _passes_multiple(before, batches_done, config.checkpoint_every):
                    writer.flush(wait=True)  # the checkpoint must not get ahead of the file
                    save_checkpoint(config.checkpoint_path, identity, batches_done, n_sequences, grids, accumulators)
                elif _passes_multiple(before, batches_done, SEQUENCE_FLUSH_BATCHES):
                    writer.flush()  # memory stays flat however long the corpus
        progress.close()
        if n_sequences == 0:
            raise ActscopeError(
                f"--dataset {config.dataset}: the corpus is empty or shorter than one sequence of {config.ctx} tokens"
            )
        _write_results(writer, config, loaded, sources, accumulators, n_sequences, started)
        writer.finish(Path(config.out))
    except BaseException:
        _abandon(writer, config)
        raise
    config.checkpoint_path.unlink(missing_ok=True)
    n_tokens = n_sequences * (config.ctx - 1)
    units = sum(s.n_units for s in sources)
    return (f"indexed {units} units ({', '.join(s.slug for s in sources)}) over {n_tokens:,} tokens "
            f"in {time.perf_counter() - started:.1f}s -> {config.out}")


def _passes_multiple(before: int, after: int, every: int) -> bool:
    """Whether a multiple of `every` lies in before+1 .. after: a step of the run can
    complete several batches (the calibration's), and must not skip a checkpoint."""
    return after // every > before // every


def _abandon(writer, config: IndexConfig) -> None:
    """After a failed run: the file closed (an error of its own dropped: the run's is the
    one to report) and deleted with its write-ahead log, unless a checkpoint can resume
    from it."""
    from .store_writer import delete_index_file

    with contextlib.suppress(Exception):
        writer.close()
    if not config.checkpoint_path.exists():
        delete_index_file(config.tmp_path)


def new_accumulators(sources, grids, config: IndexConfig, device) -> dict:
    """One empty accumulator per source, on `device`."""
    from .accumulate_dense import DenseAccumulator
    from .accumulate_sparse import SparseAccumulator

    common = dict(top_k=config.top_k, band_size=config.band_size, window=config.window, device=device)
    return {source.slug: (DenseAccumulator(source.n_units, grids[source.slug], **common)
                          if source.kind == "neuron" else
                          SparseAccumulator(source.n_units, grids[source.slug], **common))
            for source in sources}


def accumulate(accumulators: dict, sources, acts: dict, tokens, first_seq: int, seed: int,
               top_ks: dict | None = None) -> None:
    """The accumulator of every source in `acts` updated with its activations of `tokens`
    [batch, ctx] (and, for TopK SAEs, their top-k in `top_ks`, as ActivationRunner passes it)."""
    update = accumulate_each(accumulators, tokens, first_seq, seed)
    for source in sources:
        if source.slug in acts:
            update(source.slug, acts[source.slug], (top_ks or {}).get(source.slug))


def accumulate_each(accumulators: dict, tokens, first_seq: int, seed: int):
    """update(slug, activations, top_k=None): one source's accumulator updated for `tokens`
    [batch, ctx]; `top_k` as ActivationRunner passes it to `consume`."""
    import torch

    from .sampling import token_keys

    batch, ctx = tokens.shape
    seq_ids = first_seq + torch.arange(batch, device=tokens.device)
    keys = token_keys(seq_ids[:, None] * ctx + torch.arange(ctx, device=tokens.device)[None, :], seed)

    # The row order the compiled (CPU) passes visit, computed once for all sources.
    order = None
    if tokens.device.type == "cpu":
        from .kernels_cpu import key_order

        order = key_order(keys)

    def update(slug: str, acts, top_k=None) -> None:
        if top_k is None:
            accumulators[slug].update(acts, first_seq, keys, order=order)
        else:
            accumulators[slug].update(acts, first_seq, keys, top_k=top_k, order=order)

    return update


def _write_results(writer, config: IndexConfig, loaded, sources, accumulators, n_sequences: int,
                   started: float) -> None:
    """Everything but the sequences, into the file. The largest tables go first; the facts
    read off the weights (logit tables, vocabulary) are computed while DuckDB inserts them,
    on a core that would otherwise wait for it."""
    import pyarrow as pa
    import torch

    from .finalize import example_rows, unit_rows
    from .store_writer import fixed_width_lists, repeated
    from .weights import cos_in_out, logit_table

    model, slug = loaded.model, loaded.spec.slug
    # Each table in one insert, every source's rows in it: DuckDB then writes a large insert
    # straight to the file in full row groups, where one insert per source went through its
    # write-ahead log and a checkpoint (0.5 s instead of 0.75 s of DuckDB's work on the
    # benchmark's tables). The examples first: they take DuckDB longest, and are quick to build.
    writer.write_table("examples", pa.concat_tables(
        [example_rows(slug, source.slug, accumulators[source.slug], config.ctx) for source in sources]))
    rows = [unit_rows(slug, source.slug, accumulators[source.slug], cos_in_out(model, source)) for source in sources]
    writer.write_table("unit_stats", pa.concat_tables([stats for stats, _ in rows]))
    writer.write_table("bands", pa.concat_tables([bands for _, bands in rows]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the other core is DuckDB's
    try:
        tables = {source.slug: logit_table(model, source) for source in sources}
    finally:
        torch.set_num_threads(threads)
    logits = [pa.table({
        "model": repeated(slug, source.n_units),
        "source": repeated(source.slug, source.n_units),
        "unit": pa.array(np.arange(source.n_units, dtype=np.int32)),
        "top_ids": fixed_width_lists(table.top_ids.int().numpy()),
        "top_values": fixed_width_lists(table.top_values.float().numpy()),
        "bottom_ids": fixed_width_lists(table.bottom_ids.int().numpy()),
        "bottom_values": fixed_width_lists(table.bottom_values.float().numpy()),
    }) for source in sources if (table := tables[source.slug]) is not None]
    if logits:
        writer.write_table("logits", pa.concat_tables(logits))
    writer.write_rows("sources", [{
        **source.row(), "model": slug,
        "band_levels": list(accumulators[source.slug].grid.levels),
        "band_basis": "firing" if source.kind == "sae" else "all",
    } for source in sources])
    vocab_size = int(model.cfg.d_vocab)
    tokens = loaded.tokenizer.batch_decode([[i] for i in range(vocab_size)])
    writer.write_table("vocab", pa.table({
        "model": repeated(slug, vocab_size),
        "token_id": pa.array(np.arange(vocab_size, dtype=np.int32)),
        "token": pa.array(tokens),
    }))
    cfg = model.cfg
    writer.write_rows("models", [{
        "model": slug,
        "spec": json.dumps(loaded.spec.to_dict()),
        "processing": json.dumps(loaded.spec.processing),
        "n_layers": int(cfg.n_layers), "d_model": int(cfg.d_model), "d_vocab": vocab_size,
        "n_ctx": int(cfg.n_ctx), "ctx": config.ctx,
        "bos_token_id": loaded.bos_token_id, "eos_token_id": loaded.eos_token_id,
        "n_sequences": n_sequences, "n_tokens": n_sequences * (config.ctx - 1),
    }])
    writer.set_meta("package_version", __version__,
                    created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    run_config=config.to_dict(), dataset=config.dataset,
                    elapsed_seconds=round(time.perf_counter() - started, 2))
