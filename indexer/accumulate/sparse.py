"""Accumulator for a sparse source (SAE features): most values are exactly zero.

Only firing entries (activation > 0) are looked at: statistics, the histogram of firing
values, top-k and band sampling all work on those entries. Non-firing tokens are
accounted for by counts: they add zeros to the sums and fill the histogram's first bin.
Bands are quantiles of the firing values. On a CPU one fused kernel
(kernels_cpu.sparse_pass) finds the firing entries and does all of it in one read of the
batch, or, for a TopK SAE, reads only its top-k entries (sparse_topk_pass); elsewhere the
entries are found with `nonzero` and the rest is tensor operations. All paths give the
same state.
"""

from __future__ import annotations

import torch

from actscope.indexer.accumulate.grid import Grid
from actscope.indexer.accumulate.sampling import MergeableAccumulator, Summary, add_examples


class SparseAccumulator(MergeableAccumulator):
    def update(
        self,
        acts: torch.Tensor,
        first_seq: int,
        keys: torch.Tensor,
        top_k: tuple[torch.Tensor, torch.Tensor] | None = None,
        order=None,
    ) -> None:
        """acts [B, P, U] (position 0 is BOS; the last `tail` are not indexed); keys [B, P]
        float64 sampling keys; top_k: for a TopK SAE, (values, indices) [B, P, k] whose
        scatter is acts (values >= 0); order: kernels_cpu.key_order(keys, tail), if the
        caller has it (one per batch, for all sources of that tail)."""
        self.stats.n_tokens += acts.shape[0] * (acts.shape[1] - 1 - self.tail)
        if self.fused:
            self._update_fused(acts.contiguous(), first_seq, keys, top_k, order)
            return
        b, p, units, values = _firing(self._body(acts))
        stats, grid = self.stats, self.grid
        doubles = values.double()
        stats.sum.index_add_(0, units, doubles)
        stats.sum_sq.index_add_(0, units, doubles * doubles)
        stats.max.scatter_reduce_(0, units, values, reduce="amax")
        stats.min.scatter_reduce_(0, units, values, reduce="amin")
        bins = grid.bins_of(values, units)
        stats.hist += torch.bincount(units * grid.n_bins + bins, minlength=self.n_units * grid.n_bins).view(
            self.n_units, grid.n_bins
        )
        self._update_top(acts, b, p, units, values, first_seq)
        self._update_samples(acts, b, p, units, bins, keys, first_seq)

    def summary(self, hist: torch.Tensor, grid: Grid) -> Summary:
        """Only firing values are binned: the histogram covers the firing range, and the
        tokens outside it are the silent ones (their 0 is the minimum where there are any)."""
        stats = self.stats
        n_fired = hist.sum(1).double()
        fired_min = stats.min.cpu().where(n_fired > 0, torch.zeros(()))
        fired_max = stats.max.cpu().where(n_fired > 0, torch.zeros(()))
        unit_min = torch.where(n_fired < stats.n_tokens, torch.zeros(()), fired_min)
        return Summary(n_fired, unit_min, fired_max, fired_min, fired_max, stats.n_tokens - n_fired.long())

    def _update_fused(self, acts: torch.Tensor, first_seq: int, keys: torch.Tensor, top_k, order) -> None:
        from actscope.indexer.accumulate.kernels_cpu import sparse_pass, sparse_topk_pass

        if top_k is None:
            candidates = self._run_pass(sparse_pass, (acts,), keys, self._top_threshold(), order)
        else:
            values, indices = top_k
            candidates = self._run_pass(
                sparse_topk_pass, (values.contiguous(), indices.contiguous()), keys, self._top_threshold(), order
            )
        if candidates.top_overflowed() or candidates.samples_overflowed():
            # The first batches, when every firing entry is a candidate: find them again.
            if top_k is None:
                b, p, units, values = _firing(self._body(acts))
            else:
                b, p, units, values = _firing_top_k(self._body(top_k[0]), self._body(top_k[1]))
            if candidates.top_overflowed():
                self._update_top(acts, b, p, units, values, first_seq)
            if candidates.samples_overflowed():
                self._update_samples(acts, b, p, units, self.grid.bins_of(values, units), keys, first_seq)
        self._add_candidates(candidates, acts, first_seq, keys)

    def _update_top(self, acts, b, p, units, values, first_seq) -> None:
        keep = values > self.top.threshold()[units]
        self._add_top(acts, b[keep], p[keep], units[keep], first_seq)

    def _update_samples(self, acts, b, p, units, bins, keys, first_seq) -> None:
        grid = self.grid
        group = units * grid.n_bands + grid.band_of_bin.view(-1)[units * grid.n_bins + bins]
        entry_keys = keys[b, p]
        keep = entry_keys < self.samples.threshold()[group]
        add_examples(
            self.samples,
            group[keep],
            entry_keys[keep],
            acts,
            b[keep],
            p[keep],
            units[keep],
            first_seq,
            self.window,
            compiled=self.fused,
        )


def _firing(body: torch.Tensor):
    """(b, p, unit, value) of the entries with activation > 0 in body [B, P', U], the
    indexed positions 1.. of a batch (p counts from the batch's position 0)."""
    b, p, units = body.nonzero(as_tuple=True)  # SAE activations are >= 0
    values = body[b, p, units]
    firing = values > 0  # an architecture with negative outputs: those do not fire
    return b[firing], p[firing] + 1, units[firing], values[firing]


def _firing_top_k(body: torch.Tensor, indices: torch.Tensor):
    """_firing from a TopK SAE's top-k values and indices [B, P', k] at the indexed positions."""
    b, p, entry = (body > 0).nonzero(as_tuple=True)
    return b, p + 1, indices[b, p, entry], body[b, p, entry]
