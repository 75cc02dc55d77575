"""Accumulator for a dense source (MLP neurons): every unit has a value on every token.

Per batch, with x = activations [batch, pos, units] minus the BOS position:
- moments, extremes and the fine histogram, for every unit at once;
- top-k: only tokens above a unit's current k-th value become candidates;
- band samples: only tokens whose key is below a unit's largest band threshold are
  looked at, in increasing key order.
On a CPU one fused kernel (kernels_cpu.dense_pass) reads the batch once for all of it;
elsewhere (GPUs) the same work is a few vectorised tensor operations. Both paths give the
same state; candidates are compacted with a few host syncs per batch, none per unit.
"""

from __future__ import annotations

import torch

from actscope.indexer.accumulate.grid import Grid
from actscope.indexer.accumulate.sampling import (
    MergeableAccumulator,
    Summary,
    add_examples,
    band_thresholds,
)

SAMPLE_CHUNK = 512  # tokens per step of band sampling
HISTC_MIN_VALUES = 1 << 20
MAX_SAMPLE_CAPACITY = 1 << 20  # band-sample candidates buffered per part (32 MB)
TOP_ROWS_CHUNK = 2048  # units per step of the warm-up's top-k


class DenseAccumulator(MergeableAccumulator):
    def __init__(self, n_units: int, grid: Grid, **options) -> None:
        """`options`: as MergeableAccumulator's (top_k, band_size, window, device, fused)."""
        super().__init__(n_units, grid, **options)
        units = torch.arange(n_units, device=self.grid.base.device, dtype=torch.float32)
        # ceil(x * scale) + offset = unit * n_bins + bin + 1/2: one histc counts all units.
        self._bin_offset = units * grid.n_bins - self.grid.base - 0.5
        self._scratch: torch.Tensor | None = None  # reused buffer of the tensor path
        self._counts: torch.Tensor | None = None  # reused count tables of the fused pass

    def update(self, acts: torch.Tensor, first_seq: int, keys: torch.Tensor, order=None) -> None:
        """acts [B, P, U] float32 (position 0 is BOS; the last `tail` are not indexed); keys
        [B, P] float64 sampling keys; order: kernels_cpu.key_order(keys, tail), if the caller
        has it (one per batch, for all sources of that tail)."""
        if self.fused:
            self._update_fused(acts.contiguous(), first_seq, keys, order)
            return
        body = self._body(acts)
        scaled = self._update_stats(body)
        self._update_top(acts, body, scaled, first_seq)
        self._bin_counts(scaled)
        self._update_samples(acts, body, first_seq, self._body(keys).reshape(-1))

    def summary(self, hist: torch.Tensor, grid: Grid) -> Summary:
        """0 is a bin edge and bins are closed on the right: the positives are whole bins."""
        positive = torch.arange(grid.n_bins)[None, :] >= grid.first_positive_bin()[:, None]
        n_fired = (hist * positive).sum(1).double()
        unit_min, unit_max = self.stats.min.cpu(), self.stats.max.cpu()
        return Summary(n_fired, unit_min, unit_max, unit_min, unit_max, None)

    def _update_fused(self, acts: torch.Tensor, first_seq: int, keys: torch.Tensor, order) -> None:
        from actscope.indexer.accumulate.kernels_cpu import dense_pass

        body = self._body(acts)
        n_rows = body.shape[0] * body.shape[1]
        scratch = self._count_scratch(n_rows)
        candidates = self._run_pass(dense_pass, (acts, scratch), keys, self._top_threshold(), order)
        self.stats.n_tokens += n_rows
        self._add_candidates(candidates, acts, first_seq, keys)
        if candidates.top_overflowed():  # too many to buffer (no top floor, top-k not full yet): find them again
            self._update_top(acts, body, body.reshape(-1, self.n_units) * self.grid.scale, first_seq)
        if candidates.samples_overflowed():
            self._update_samples(acts, body, first_seq, self._body(keys).reshape(-1))

    def _sample_capacity(self) -> int:
        """Room for every candidate a pass can find: a band takes at most band_size per
        batch, so a part's units x bands x band_size (at most MAX_SAMPLE_CAPACITY). With
        less, the first batches of a source of thousands of units, whose bands are all still
        open, overflowed the buffer and were sampled again by the tensor path: at 36,864
        neurons that was most of the run's first minutes."""
        import numba

        from actscope.indexer.accumulate.kernels_cpu import CANDIDATE_CAPACITY

        bound = -(-self.n_units // numba.get_num_threads()) * self.grid.n_bands * self.samples.n
        return max(CANDIDATE_CAPACITY, min(bound, MAX_SAMPLE_CAPACITY))

    def _count_scratch(self, n_rows: int) -> torch.Tensor:
        """dense_pass's zeroed [n_parts, part width, n_bins] count tables, kept: int16 when a
        bin cannot reach 2**15 in one batch of n_rows tokens, as in any usual batch (half the
        cache footprint of int32, which made the pass about 7% quicker), else int32."""
        import numba

        n_parts = numba.get_num_threads()
        shape = (n_parts, -(-self.n_units // n_parts), self.grid.n_bins)
        dtype = torch.int16 if n_rows < 1 << 15 else torch.int32
        if self._counts is None or tuple(self._counts.shape) != shape or self._counts.dtype != dtype:
            self._counts = torch.zeros(shape, dtype=dtype)
        return self._counts

    def _update_stats(self, body: torch.Tensor) -> torch.Tensor:
        """Moments and extremes; returns the values times the grid scale, [tokens, U].

        Scaling by a power of two is exact, so every reduction of the scaled values, divided
        by the scale, equals the reduction of the values themselves; the scaled copy is
        then reused for the bins, which saves a pass over the batch.
        """
        stats, scale = self.stats, self.grid.scale
        n_units = self.n_units
        scaled = torch.mul(body, scale, out=self._buffer(body)).view(-1, n_units)
        stats.n_tokens += scaled.shape[0]
        stats.sum += scaled.sum(0).double() / scale.double()
        stats.sum_sq += torch.linalg.vecdot(scaled, scaled, dim=0).double() / scale.double() ** 2
        self._batch_low, self._batch_high = scaled.amin(0), scaled.amax(0)
        stats.max = torch.maximum(stats.max, self._batch_high / scale)
        stats.min = torch.minimum(stats.min, self._batch_low / scale)
        return scaled

    def _buffer(self, body: torch.Tensor) -> torch.Tensor:
        if self._scratch is None or self._scratch.shape != body.shape:
            self._scratch = torch.empty(body.shape, dtype=torch.float32, device=body.device)
        return self._scratch

    def _bin_counts(self, scaled: torch.Tensor) -> None:
        """Add the batch to the fine histogram (destroys `scaled`)."""
        grid = self.grid
        scaled.ceil_()
        # Values outside the calibrated range go to the open end bins; only the few units
        # that have such values this batch need the clamp.
        low, high = grid.base + 1, grid.base + grid.n_bins  # ceil(x * scale) of bins 0, n-1
        outside = ((self._batch_low < low) | (self._batch_high > high)).nonzero().squeeze(1)
        if outside.numel():
            scaled[:, outside] = torch.clamp(scaled[:, outside], min=low[outside], max=high[outside])
        scaled.add_(self._bin_offset)
        total = self.n_units * grid.n_bins
        if scaled.numel() >= HISTC_MIN_VALUES:
            counts = torch.histc(scaled, bins=total, min=0, max=total).long()
        else:  # histc has a fixed cost of several ms that dominates small batches
            counts = torch.bincount(scaled.view(-1).long(), minlength=total)
        self.stats.hist += counts.view(self.n_units, grid.n_bins)

    def _update_top(self, acts: torch.Tensor, body: torch.Tensor, scaled: torch.Tensor, first_seq: int) -> None:
        width = body.shape[1]
        if not bool(self.top.filled().all()):
            self._warm_up_top(acts, body, scaled, first_seq)
            return
        threshold = self.top.threshold().float() * self.grid.scale
        rows, units = (scaled > threshold).nonzero(as_tuple=True)
        self._add_top(acts, rows // width, rows % width + 1, units, first_seq)

    def _warm_up_top(self, acts: torch.Tensor, body: torch.Tensor, values: torch.Tensor, first_seq: int) -> None:
        """Until every unit has k examples: reduce the batch to its own top-k per unit."""
        k_batch = min(self.top.n, values.shape[0])
        rows = top_rows(values, k_batch).reshape(-1)
        units = torch.arange(self.n_units, device=body.device).repeat(k_batch)
        self._add_top(acts, rows // body.shape[1], rows % body.shape[1] + 1, units, first_seq)

    def _update_samples(self, acts: torch.Tensor, body: torch.Tensor, first_seq: int, keys: torch.Tensor) -> None:
        """Priority sampling, visiting the batch's tokens in increasing key order.

        A unit can only accept a token whose key is below its largest band threshold, so
        tokens are taken in chunks of increasing key, each chunk against the units that
        can still accept it. Once every band is full (after the first batches) only a
        small prefix of the batch is ever looked at.
        """
        order = torch.argsort(keys)
        sorted_keys = keys[order]
        width = body.shape[1]
        start = 0
        while start < order.numel():
            need = self._unit_need()
            limit = int(torch.searchsorted(sorted_keys, need.max()))
            if start >= limit:
                break
            rows = order[start : min(limit, start + SAMPLE_CHUNK)]
            units = (need > sorted_keys[start]).nonzero().squeeze(1)
            b, p = rows // width, rows % width
            values = body[b, p]
            if units.numel() < self.n_units:
                values = values[:, units]
            self._sample_from(acts, values, b, p, units, keys[rows], first_seq)
            start += rows.numel()

    def _unit_need(self) -> torch.Tensor:
        """[U] largest band threshold per unit (inf while a band is being filled)."""
        return band_thresholds(self.samples, self.grid.band_start).amax(1)

    def _sample_from(self, acts, values, b, p, units, keys, first_seq) -> None:
        """Candidates among values [rows, units]: key below their (unit, band) threshold."""
        grid, n_bands = self.grid, self.grid.n_bands
        bins = grid.bins_of(values, units[None, :])
        bands = grid.band_of_bin.view(-1)[units[None, :] * grid.n_bins + bins]
        thresholds = self.samples.threshold()[units[None, :] * n_bands + bands]
        r, c = (keys[:, None] < thresholds).nonzero(as_tuple=True)
        cand_units = units[c]
        add_examples(
            self.samples,
            cand_units * n_bands + bands[r, c],
            keys[r],
            acts,
            b[r],
            p[r] + 1,
            cand_units,
            first_seq,
            self.window,
            compiled=self.fused,
        )


def top_rows(values: torch.Tensor, k: int) -> torch.Tensor:
    """[k, U] rows of the k largest values [R, U] of each unit, ties to the earlier row
    (and -0.0 tied with 0.0), as the stream and merges break them: a plain topk picks
    any of the tied rows, so a batch of many equal values (a unit silent on most tokens)
    kept other examples depending on how the corpus was batched or sharded."""
    bits = (values.float() + 0.0).view(torch.int32)
    ordered = torch.where(bits >= 0, bits, bits ^ 0x7FFFFFFF).long()  # monotone in the value
    later = (1 << 32) - 1 - torch.arange(values.shape[0], device=values.device)[:, None]
    chunks = [  # a few columns at a time: the int64 keys are twice the batch's size
        ((ordered[:, start : start + TOP_ROWS_CHUNK] << 32) | later).topk(k, dim=0).indices
        for start in range(0, values.shape[1], TOP_ROWS_CHUNK)
    ]
    return torch.cat(chunks, dim=1)
