"""Calibration: estimate each unit's range and band quantiles from the first tokens.

The estimates only place the bins and band edges; all counts reported in the index come
from the full pass, so a calibration that is off makes bands uneven, never wrong. The
activations of the calibration batches are handed back, so the main pass accumulates
them without a second forward pass (SAE activations are kept sparse: a TopK SAE's top-k,
other SAEs' firing entries).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from actscope.indexer.accumulate.grid import Grid, add_dense_bin_counts, build_grid, uniform_grid, with_bands
from actscope.indexer.kinds import Source

TopK = tuple[torch.Tensor, torch.Tensor]  # (values, indices) [batch, pos, k]


@dataclass
class Kept:
    """What calibration kept of one source's activations of one batch: the activations
    themselves (dense [B, P, U], or a sparse tensor), or a TopK SAE's top-k."""

    acts: torch.Tensor | None = None
    top_k: TopK | None = None


@dataclass
class Consumed:
    """One batch calibration took from the stream, with what it kept of each source."""

    batch: Any  # corpus.batches.Batch
    kept: dict[str, Kept]
    n_units: dict[str, int]


@dataclass
class Step:
    """One accumulation step of a run: activations of `tokens` [S, ctx] (sequences from
    `first_seq` on), or None to run the model on them; `batches` are the corpus batches the
    step completes (none: more steps of the same batches follow)."""

    batches: list
    tokens: torch.Tensor
    first_seq: int
    acts: dict[str, torch.Tensor] | None = None
    top_ks: dict[str, TopK] | None = None


def calibrate(
    runner, batches: Iterator, sources: list[Source], n_tokens: int, hist_bins: int, top_k: int = 0
) -> tuple[dict[str, Grid], list[Consumed]]:
    """({slug: grid}, consumed) from the first `n_tokens` indexed tokens.

    The batches are taken from `batches`, which the caller then goes on reading; use
    `replay` on `consumed` to get their activations back as the runner gave them. With
    `top_k`, the grids also get their `top_floor` for that k: only valid for accumulators
    that are given these batches too (as the replay does), since it is read off them.
    """
    # Neuron activations are copied, for the replay and the grids, into one store per
    # source sized on the first batch. Keeping the runner's own tensors instead would leave
    # them scattered through the heap: the forward passes during and after calibration
    # then page in fresh memory (about 4 batches' worth), which costs more than the copy.
    dense = {s.slug for s in sources if not s.kind.sparse}
    stores: dict[str, torch.Tensor] = {}  # [sequences, P, U]; the first n_seqs rows filled
    sparse: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {s.slug: [] for s in sources if s.kind.sparse}
    n_units = {s.slug: s.n_units for s in sources}
    tails = {s.slug: s.kind.tail for s in sources}  # last positions not indexed
    seen, n_seqs = 0, 0
    consumed: list[Consumed] = []
    for batch in batches:
        kept: dict[str, Kept] = {}

        def keep(slug: str, acts: torch.Tensor, top_k: TopK | None) -> None:
            if slug in dense:
                if slug not in stores:  # room for the sequences calibration can take
                    batch_size, ctx = acts.shape[:2]
                    needed = -(-n_tokens // (ctx - 1))
                    capacity = -(-needed // batch_size) * batch_size
                    stores[slug] = torch.empty((capacity, *acts.shape[1:]), dtype=acts.dtype, device=acts.device)
                rows = stores[slug][n_seqs : n_seqs + acts.shape[0]]
                rows.copy_(acts)
                kept[slug] = Kept(acts=rows)
                return
            if top_k is not None:
                values, indices = top_k
                b, p, k = torch.nonzero(values > 0, as_tuple=True)
                firing_units, firing_values = indices[b, p, k], values[b, p, k]
                body = (p > 0) & (p < values.shape[1] - tails[slug])
                kept[slug] = Kept(top_k=top_k)
            else:
                entries = acts.to_sparse()
                kept[slug] = Kept(acts=entries)
                b, p, firing_units = entries.indices()
                firing_values = entries.values()
                body = (p > 0) & (p < acts.shape[1] - tails[slug]) & (firing_values > 0)
            sparse[slug].append((firing_units[body].cpu(), firing_values[body].cpu()))

        runner(batch.tokens, consume=keep)
        consumed.append(Consumed(batch, kept, n_units))
        seen += batch.tokens.shape[0] * (batch.tokens.shape[1] - 1)
        n_seqs += batch.tokens.shape[0]
        if seen >= n_tokens:
            break
    grids = {}
    for source in sources:
        levels = source.kind.band_levels
        if source.kind.sparse:
            grids[source.slug] = _sparse_grid(sparse[source.slug], source.n_units, hist_bins, top_k, levels)
        else:
            store = stores.get(source.slug)
            acts = store[:n_seqs, : store.shape[1] - source.kind.tail] if store is not None else None
            grids[source.slug] = _dense_grid(acts, source.n_units, hist_bins, top_k, levels)
    return grids, consumed


BufferOf = Callable[[str, tuple[int, ...], Any], torch.Tensor]


def replay(
    consumed: list[Consumed], buffer_of: BufferOf, skip: frozenset[str] = frozenset()
) -> Iterator[tuple[Any, dict[str, torch.Tensor], dict[str, TopK]]]:
    """(batch, activations, top_ks) of the calibration batches: the activations as the
    runner gave them ({slug: [B, P, U]}), and the top-k a TopK SAE gave ({slug: (values,
    indices)}), for every source but those in `skip`. A TopK SAE's dense activations are
    rebuilt in the buffer `buffer_of(slug, shape, device)` gives
    (ActivationRunner.output_buffer: with `reuse_outputs`, the one the runner reuses,
    already paged in), overwritten by the next batch: use each batch's activations before
    taking the next."""
    while consumed:
        item = consumed.pop(0)  # released as soon as it is used
        acts, top_ks = {}, {}
        for slug, kept in item.kept.items():
            if slug in skip:
                continue
            if kept.top_k is not None:
                values, indices = kept.top_k
                top_ks[slug] = kept.top_k
                buffer = buffer_of(slug, (*values.shape[:-1], item.n_units[slug]), values.device)
                acts[slug] = buffer.zero_().scatter_(-1, indices, values)
            else:
                assert kept.acts is not None
                acts[slug] = kept.acts.to_dense() if kept.acts.is_sparse else kept.acts
        yield item.batch, acts, top_ks


def replay_steps(consumed: list[Consumed], buffer_of: BufferOf, together: frozenset[str]) -> Iterator[Step]:
    """The calibration batches as accumulation steps: each batch with the activations of
    the sources not in `together` (no `batches`: the batch is not complete yet), then one
    step of all the batches, their tokens [S, ctx], and the activations [S, P, U] of the
    dense sources in `together` over all of them.

    Accumulated in one update, a dense source's band sampling takes each band's samples
    once, in increasing key order over all the calibration tokens, where batch by batch a
    band took its samples in each batch anew until its threshold came down; the state is
    the same. (SAE sources stay batch by batch: a TopK SAE's dense activations of all the
    batches at once would be a large fresh buffer.)
    """
    batches = [item.batch for item in consumed]
    if not batches:
        return
    joined = {slug: _joined([_dense(item.kept[slug]) for item in consumed]) for slug in together}
    for batch, acts, top_ks in replay(consumed, buffer_of, skip=together):
        yield Step([], batch.tokens, batch.first_seq, acts, top_ks)
    yield Step(batches, torch.cat([batch.tokens for batch in batches]), batches[0].first_seq, joined, {})


def _dense(kept: Kept) -> torch.Tensor:
    assert kept.acts is not None, "a dense source keeps its activations"
    return kept.acts


def _joined(parts: list[torch.Tensor]) -> torch.Tensor:
    """Consecutive row ranges of one dense source's store (see `calibrate`) as one tensor
    over all of them, without a copy."""
    first = parts[0]
    row_bytes = first.stride(0) * first.element_size()
    row = 0
    for part in parts:  # each part must start where the rows before it end, in one storage; else copy
        if (
            part.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
            or part.stride() != first.stride()
            or part.data_ptr() != first.data_ptr() + row * row_bytes
        ):
            return torch.cat(parts)
        row += part.shape[0]
    return first.as_strided((row, *first.shape[1:]), first.stride(), first.storage_offset())


def _dense_grid(acts: torch.Tensor | None, n_units: int, hist_bins: int, top_k: int, levels: tuple[float, ...]) -> Grid:
    """Grid from the calibration sequences' activations [S, P, U] at their indexed
    positions, BOS (position 0) left out."""
    if acts is None:  # no calibration tokens: one token of zeros
        acts = torch.zeros(1, 2, n_units)
    # Along positions first, then sequences: much faster than one reduction over both.
    lo = acts[:, 1:, :].amin(1).amin(0).cpu()
    hi = acts[:, 1:, :].amax(1).amax(0).cpu()
    grid = uniform_grid(lo, hi, levels, hist_bins)
    counts = torch.zeros(n_units, grid.n_bins, dtype=torch.long)
    add_dense_bin_counts(grid, acts, counts)
    return with_bands(grid, counts, top_k)


def _sparse_grid(parts, n_units: int, hist_bins: int, top_k: int, levels: tuple[float, ...]) -> Grid:
    units = torch.cat([u for u, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
    values = torch.cat([v for _, v in parts]) if parts else torch.zeros(0)
    lo = torch.full((n_units,), float("inf")).scatter_reduce(0, units, values, "amin")
    hi = torch.zeros(n_units).scatter_reduce(0, units, values, "amax")
    silent = torch.bincount(units, minlength=n_units) == 0
    lo[silent] = 0.0
    grid = build_grid(lo, hi, levels, hist_bins, units, values, top_k)
    if bool(silent.any()):
        # Features silent during calibration get the source's pooled range and bands:
        # their counts stay exact, only their band edges are less tailored.
        pooled_hi = values.max().reshape(1) if values.numel() else torch.ones(1)
        pooled = build_grid(torch.zeros(1), pooled_hi, levels, hist_bins, torch.zeros_like(units), values)
        for name in ("scale", "base", "band_start", "band_of_bin"):
            getattr(grid, name)[silent] = getattr(pooled, name)[0]
    return grid
