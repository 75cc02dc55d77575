"""Compiled kernels over each unit's fine-bin counts, a unit at a time on every core:
calibration's bands, and the running sums the unit tables read.

bands_of_counts does the arithmetic of grid._band_starts_of and Grid._top_floor_of
(float64 running sums of the bin counts, the same comparisons) one unit at a time: the
torch version made several [units x bins] temporaries, hundreds of MB each at a hundred
thousand units.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, nogil=True)
def bands_of_counts(counts, inner_levels, top_k, band_start, band_of_bin, highest):
    """From counts [U, n_bins] int64: band_start [U, n_inner + 2] (0, each inner level's
    start, n_bins), band_of_bin [U, n_bins] and, with top_k, highest [U]: the highest bin
    j >= 0 with at least top_k values in bins j and above (-1 where there are fewer)."""
    n_units, n_bins = counts.shape
    n_inner = inner_levels.shape[0]
    n_parts = min(n_units, 64)
    for part in prange(n_parts):
        cumulative = np.empty(n_bins, np.float64)
        for u in range(part, n_units, n_parts):
            total = 0.0
            for j in range(n_bins):
                total += np.float64(counts[u, j])
                cumulative[j] = total
            band_start[u, 0] = 0
            running = 1
            for b in range(n_inner):
                target = inner_levels[b] * total
                low, high = 0, n_bins  # the first bin whose running sum reaches the target
                while low < high:
                    middle = (low + high) // 2
                    if cumulative[middle] < target:
                        low = middle + 1
                    else:
                        high = middle
                crossing = min(low, n_bins - 1)
                reached = cumulative[crossing]
                before = cumulative[crossing - 1] if crossing > 0 else 0.0
                inner = crossing + (1 if reached - target < target - before else 0)
                inner = min(max(inner, 1), n_bins - 1)
                running = max(running, inner)
                band_start[u, b + 1] = running
            band_start[u, n_inner + 1] = n_bins
            for j in range(n_bins):
                band_of_bin[u, j] = 0
            for b in range(n_inner):
                band_of_bin[u, band_start[u, b + 1]] += 1
            for j in range(1, n_bins):
                band_of_bin[u, j] += band_of_bin[u, j - 1]
            if top_k:
                enough = 0
                for j in range(n_bins - 1):
                    if cumulative[j] <= total - top_k:
                        enough += 1
                highest[u] = enough - (1 if total < top_k else 0)


@njit(parallel=True, cache=True, nogil=True)
def counts_below(hist, points, out):
    """out[u, i] = the sum of hist[u, :points[u, i]] (hist [U, n_bins] int64, points
    [U, m] in 0..n_bins): the running sums the unit tables read, without [U, n_bins + 1]
    of them."""
    n_units, n_bins = hist.shape
    n_parts = min(n_units, 64)
    for part in prange(n_parts):
        cumulative = np.empty(n_bins + 1, np.int64)
        for u in range(part, n_units, n_parts):
            cumulative[0] = 0
            for j in range(n_bins):
                cumulative[j + 1] = cumulative[j] + hist[u, j]
            for i in range(points.shape[1]):
                out[u, i] = cumulative[points[u, i]]
