"""Fused one-pass kernels for accumulators on the CPU (compiled with numba).

On a CPU, a chain of tensor operations reads the batch a dozen times; these kernels read
each activation once and do everything the torch path does: moments, extremes, the fine
histogram bin, and the top-k and band-sampling candidate tests. They compute exactly the
same bins and candidates as the torch path (tests compare the two). Work is split across
threads by blocks of units, so every unit is updated by one thread, deterministically.

Candidates are written to fixed-size buffers per block; a count above the capacity means
the buffer overflowed (during warm-up, when every token is a candidate) and the caller
then finds that batch's candidates with the torch path instead.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

UNIT_BLOCK = 32  # units per thread task: their histograms stay in cache


@njit(parallel=True, cache=True, nogil=True)
def dense_pass(acts, keys, scale, base, n_bins, top_threshold, band_of_bin, sample_threshold, n_bands,
               unit_need, total, total_sq, low, high, hist, top_out, top_count, sample_out, sample_count):
    """acts [B, P, U] float32 (position 0 is BOS, skipped); keys [B, P] float64.

    unit_need [U] is each unit's largest band threshold: a token whose key is above it
    cannot enter any of the unit's bands, which spares the band lookup for most tokens.
    """
    n_batch, n_pos, n_units = acts.shape
    n_blocks = top_count.shape[0]
    top_cap = top_out.shape[1]
    sample_cap = sample_out.shape[1]
    for block in prange(n_blocks):
        first = block * UNIT_BLOCK
        last = min(n_units, first + UNIT_BLOCK)
        n_top = 0
        n_sample = 0
        for b in range(n_batch):
            for p in range(1, n_pos):
                key = keys[b, p]
                for u in range(first, last):
                    x = acts[b, p, u]
                    total[u] += x
                    total_sq[u] += np.float64(x) * x
                    if x < low[u]:
                        low[u] = x
                    if x > high[u]:
                        high[u] = x
                    # ceil(x * 2**e) is exact in float32; the rest is integer arithmetic.
                    j = np.int64(np.ceil(x * scale[u])) - 1 - np.int64(base[u])
                    if j < 0:
                        j = 0
                    elif j >= n_bins:
                        j = n_bins - 1
                    hist[u, j] += 1
                    if x > top_threshold[u]:
                        if n_top < top_cap:
                            top_out[block, n_top, 0] = b
                            top_out[block, n_top, 1] = p
                            top_out[block, n_top, 2] = u
                        n_top += 1
                    if key >= unit_need[u]:
                        continue
                    band = band_of_bin[u, j]
                    if key < sample_threshold[u * n_bands + band]:
                        if n_sample < sample_cap:
                            sample_out[block, n_sample, 0] = b
                            sample_out[block, n_sample, 1] = p
                            sample_out[block, n_sample, 2] = u
                            sample_out[block, n_sample, 3] = band
                        n_sample += 1
        top_count[block] = n_top
        sample_count[block] = n_sample


@njit(cache=True, nogil=True)
def sparse_entries(acts, out_b, out_p, out_u, out_v):
    """Firing entries (act > 0) of acts [B, P, U], BOS skipped; returns their number.

    A single read of the batch, in (b, p, u) order; the output arrays must hold
    B * (P - 1) * U entries at most, but callers size them from the previous batch and
    retry with more room when the returned count exceeds it.
    """
    n_batch, n_pos, n_units = acts.shape
    cap = out_b.shape[0]
    n = 0
    for b in range(n_batch):
        for p in range(1, n_pos):
            for u in range(n_units):
                x = acts[b, p, u]
                if x > 0:
                    if n < cap:
                        out_b[n] = b
                        out_p[n] = p
                        out_u[n] = u
                        out_v[n] = x
                    n += 1
    return n
