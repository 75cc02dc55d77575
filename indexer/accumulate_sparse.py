"""Accumulator for a sparse source (SAE features): most values are exactly zero.

The batch is reduced once to its firing entries (activation > 0); statistics, the
histogram of firing values, top-k and band sampling all work on those entries only.
Non-firing tokens are accounted for by counts: they add zeros to the sums and fill the
histogram's first bin. Bands are quantiles of the firing values.
"""

from __future__ import annotations

import numpy as np
import torch

from .grid import Grid
from .sampling import MergeableAccumulator, RunningStats, add_examples, new_examples


class SparseAccumulator(MergeableAccumulator):
    def __init__(self, n_units: int, grid: Grid, *, top_k: int, band_size: int,
                 window: tuple[int, int], device, fused: bool | None = None) -> None:
        self.n_units = n_units
        # On a CPU a compiled scan finds the firing entries in one read of the batch.
        self.fused = torch.device(device).type == "cpu" if fused is None else fused
        self._capacity = 1 << 16
        self.grid = grid.to(device)
        self.window = window
        width = window[0] + 1 + window[1]
        self.stats = RunningStats(n_units, grid.n_bins, device)  # hist of firing values only
        self.top = new_examples(n_units, top_k, True, width, device)
        self.samples = new_examples(n_units * grid.n_bands, band_size, False, width, device)

    def update(self, acts: torch.Tensor, first_seq: int, keys: torch.Tensor) -> None:
        """acts [B, P, U] (position 0 is BOS); keys [B, P] float64 sampling keys."""
        body = acts[:, 1:, :]
        b, p, units, values = self._firing(acts.contiguous()) if self.fused else self._firing_torch(body)
        stats, grid = self.stats, self.grid
        stats.n_tokens += body.shape[0] * body.shape[1]
        doubles = values.double()
        stats.sum.index_add_(0, units, doubles)
        stats.sum_sq.index_add_(0, units, doubles * doubles)
        stats.max.scatter_reduce_(0, units, values, reduce="amax")
        stats.min.scatter_reduce_(0, units, values, reduce="amin")
        bins = grid.bins_of(values, units)
        stats.hist += torch.bincount(units * grid.n_bins + bins,
                                     minlength=self.n_units * grid.n_bins).view(self.n_units, grid.n_bins)
        self._update_top(acts, b, p, units, values, first_seq)
        bands = grid.band_of_bin.view(-1)[units * grid.n_bins + bins]
        group = units * grid.n_bands + bands
        entry_keys = keys[b, p]
        keep = entry_keys < self.samples.threshold()[group]
        add_examples(self.samples, group[keep], entry_keys[keep], acts, b[keep], p[keep],
                  units[keep], first_seq, self.window)

    def _firing(self, acts: torch.Tensor):
        """(b, p, unit, value) of the entries with activation > 0, BOS excluded."""
        from .kernels_cpu import sparse_entries

        while True:
            out = [np.empty(self._capacity, dtype=np.int64) for _ in range(3)]
            values = np.empty(self._capacity, dtype=np.float32)
            n = sparse_entries(acts.numpy(), *out, values)
            if n <= self._capacity:
                break
            self._capacity = int(n * 1.25)  # more room, and keep it for the next batches
        return (*(torch.from_numpy(o[:n]) for o in out), torch.from_numpy(values[:n]))

    @staticmethod
    def _firing_torch(body: torch.Tensor):
        b, p, units = body.nonzero(as_tuple=True)  # SAE activations are >= 0
        values = body[b, p, units]
        firing = values > 0  # an architecture with negative outputs: those do not fire
        b, p, units, values = b[firing], p[firing], units[firing], values[firing]
        return b, p + 1, units, values

    def _update_top(self, acts, b, p, units, values, first_seq) -> None:
        keep = values > self.top.threshold()[units]
        add_examples(self.top, units[keep], values[keep].double(), acts, b[keep], p[keep],
                  units[keep], first_seq, self.window)
