"""Accumulator for a dense source (MLP neurons): every unit has a value on every token.

Per batch, with x = activations [batch, pos, units] minus the BOS position:
- moments, extremes, firing counts and the fine histogram in a few full passes of
  float32 tensor operations (no per-unit loops, no host syncs);
- top-k: only tokens above a unit's current k-th value become candidates;
- band samples: only tokens whose key is below the largest current per-band threshold
  are looked at, plus all tokens for the few units with a band still being filled.
"""

from __future__ import annotations

import torch

from .grid import Grid
from .sampling import RunningStats, add_examples, new_examples


class DenseAccumulator:
    def __init__(self, n_units: int, grid: Grid, shift: torch.Tensor, *, top_k: int,
                 band_size: int, window: tuple[int, int], device) -> None:
        self.n_units = n_units
        self.grid = grid.to(device)
        self.shift = shift.float().to(device)  # calibration mean: keeps sum of squares stable
        self.window = window
        width = window[0] + 1 + window[1]
        self.stats = RunningStats(n_units, grid.n_bins, device)
        self.top = new_examples(n_units, top_k, True, width, device)
        self.samples = new_examples(n_units * grid.n_bands, band_size, False, width, device)
        units = torch.arange(n_units, device=device, dtype=torch.float32)
        self._bin_offset = units * grid.n_bins - self.grid.base + 0.5
        self._bin_max = self.grid.base + (grid.n_bins - 1)
        empty = self.grid.band_start[:, 1:] == self.grid.band_start[:, :-1]
        self._empty_band = empty  # bands no bin maps to never get samples

    def update(self, acts: torch.Tensor, first_seq: int, keys: torch.Tensor) -> None:
        """acts [B, P, U] float32 (position 0 is BOS); keys [B, P] float64 sampling keys."""
        batch, ctx, n_units = acts.shape
        body = acts[:, 1:, :]
        self._update_stats(body)
        self._update_top(acts, body, first_seq)
        self._update_samples(acts, body, first_seq, keys[:, 1:].reshape(-1))

    def _update_stats(self, body: torch.Tensor) -> None:
        stats, grid = self.stats, self.grid
        stats.n_tokens += body.shape[0] * body.shape[1]
        buf = torch.sub(body, self.shift, out=torch.empty(body.shape, device=body.device))
        stats.sum += buf.sum((0, 1), dtype=torch.float64)
        buf.mul_(buf)
        stats.sum_sq += buf.sum((0, 1), dtype=torch.float64)
        stats.max = torch.maximum(stats.max, body.amax((0, 1)))
        stats.min = torch.minimum(stats.min, body.amin((0, 1)))
        torch.sign(body, out=buf)
        stats.n_fired += buf.clamp_(min=0).sum((0, 1), dtype=torch.float64)
        # Fine-bin index of every value, offset by unit so one histc counts all units.
        torch.mul(body, grid.scale, out=buf)
        buf.floor_()
        torch.clamp(buf, min=grid.base, max=self._bin_max, out=buf)
        buf.add_(self._bin_offset)
        total = self.n_units * grid.n_bins
        counts = torch.histc(buf, bins=total, min=0, max=total)
        stats.hist += counts.view(self.n_units, grid.n_bins).long()

    def _update_top(self, acts: torch.Tensor, body: torch.Tensor, first_seq: int) -> None:
        k = self.top.n
        if not bool(self.top.filled().all()):
            # Warm-up: reduce the batch to its own top-k per unit before merging.
            flat = body.reshape(-1, self.n_units)
            k_batch = min(k, flat.shape[0])
            _, rows = flat.topk(k_batch, dim=0)
            rows = rows.reshape(-1)
            units = torch.arange(self.n_units, device=body.device).repeat(k_batch)
            b, p = rows // body.shape[1], rows % body.shape[1] + 1
        else:
            threshold = self.top.threshold().float()
            b, p, units = (body > threshold).nonzero(as_tuple=True)
            p = p + 1
        add_examples(self.top, units, acts[b, p, units].double(), acts, b, p, units, first_seq, self.window)

    def _update_samples(self, acts: torch.Tensor, body: torch.Tensor, first_seq: int,
                        keys: torch.Tensor) -> None:
        n_bands = self.grid.n_bands
        needed = self.samples.threshold().view(self.n_units, n_bands)
        needed = needed.masked_fill(self._empty_band, float("-inf"))
        unit_need = needed.amax(1)  # a token can matter to a unit only if its key is below
        hungry = torch.isinf(unit_need) & (unit_need > 0)  # a band still being filled
        all_units = torch.arange(self.n_units, device=body.device)
        width = body.shape[1]
        fed_need = unit_need.masked_fill(hungry, float("-inf")).max()
        if fed_need > 0:
            rows = (keys < fed_need).nonzero().squeeze(1)
            b, p = rows // width, rows % width
            self._sample_from(acts, body[b, p], b, p, all_units, keys[rows], first_seq,
                              skip=hungry)
        hungry_units = hungry.nonzero().squeeze(1)
        if hungry_units.numel():
            rows = torch.arange(keys.numel(), device=body.device)
            b, p = rows // width, rows % width
            values = body[:, :, hungry_units].reshape(-1, hungry_units.numel())
            self._sample_from(acts, values, b, p, hungry_units, keys, first_seq, skip=None)

    def _sample_from(self, acts, values, b, p, units, keys, first_seq, skip) -> None:
        """Candidates among values [rows, units]: key below their (unit, band) threshold."""
        grid, n_bands = self.grid, self.grid.n_bands
        bins = grid.bins_of(values, units[None, :])
        bands = grid.band_of_bin.view(-1)[units[None, :] * grid.n_bins + bins]
        thresholds = self.samples.threshold()[units[None, :] * n_bands + bands]
        if skip is not None:  # units handled by the all-rows pass
            thresholds = thresholds.masked_fill(skip[None, :], float("-inf"))
        r, c = (keys[:, None] < thresholds).nonzero(as_tuple=True)
        cand_units = units[c]
        add_examples(self.samples, cand_units * n_bands + bands[r, c], keys[r], acts,
                  b[r], p[r] + 1, cand_units, first_seq, self.window)

    def merge(self, other: "DenseAccumulator") -> None:
        self.stats.merge(other.stats)
        self.top.merge(other.top)
        self.samples.merge(other.samples)

    def state_dict(self) -> dict:
        return {"stats": self.stats.state_dict(), "top": self.top.state_dict(),
                "samples": self.samples.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.stats.load_state_dict(state["stats"])
        self.top.load_state_dict(state["top"])
        self.samples.load_state_dict(state["samples"])
