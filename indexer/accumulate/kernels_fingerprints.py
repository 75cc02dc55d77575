"""Compiled kernels that turn a fingerprint reservoir's values [slots, units] (float16,
taken as their uint16 bits) into its units' rows of the index, on every core.

numpy's transpose of a [4096, 65536] float16 array and its nonzero() over it (float16
comparisons are emulated) were most of a run's fingerprint phase at a hundred thousand
units. These read each slot's row once per block of units (whole cache lines) and write
each unit's values in slot order, a block of units per thread: the bytes are the same.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

UNITS_PER_BLOCK = 64  # one block's part of a slot's row: two cache lines of float16
_MAGNITUDE = 0x7FFF  # a float16 is nonzero iff these bits are (so -0.0 is zero, NaN is not)


@njit(parallel=True, cache=True, nogil=True)
def units_by_slot(acts, order, out):
    """out[u, i] = acts[order[i], u]: acts [slots, U] uint16, order [n], out [U, n] uint16.
    A tile of slots x units at a time, through a local buffer: written straight from
    the rows, out's rows (a power of two apart) would evict each other from the cache."""
    n = order.shape[0]
    n_units = acts.shape[1]
    n_blocks = -(-n_units // UNITS_PER_BLOCK)
    for block in prange(n_blocks):
        start = block * UNITS_PER_BLOCK
        width = min(n_units, start + UNITS_PER_BLOCK) - start
        tile = np.empty((UNITS_PER_BLOCK, UNITS_PER_BLOCK), np.uint16)
        for first in range(0, n, UNITS_PER_BLOCK):
            height = min(n, first + UNITS_PER_BLOCK) - first
            for i in range(height):
                row = acts[order[first + i]]
                for u in range(width):
                    tile[i, u] = row[start + u]
            for u in range(width):
                line = out[start + u]
                for i in range(height):
                    line[first + i] = tile[i, u]


@njit(parallel=True, cache=True, nogil=True)
def nonzero_counts(acts, order, counts):
    """counts[u] = the nonzero values of unit u among the rows `order` of acts [slots, U] uint16."""
    n = order.shape[0]
    n_units = acts.shape[1]
    n_blocks = -(-n_units // UNITS_PER_BLOCK)
    for block in prange(n_blocks):
        start = block * UNITS_PER_BLOCK
        stop = min(n_units, start + UNITS_PER_BLOCK)
        local = np.zeros(stop - start, np.int64)
        for i in range(n):
            row = acts[order[i]]
            for u in range(start, stop):
                local[u - start] += (row[u] & _MAGNITUDE) != 0
        counts[start:stop] = local


@njit(parallel=True, cache=True, nogil=True)
def nonzero_by_unit(acts, order, offsets, values, slots):
    """Each unit u's nonzero values among the rows `order` of acts [slots, U] uint16, in
    order, at values[offsets[u]:offsets[u + 1]], and their numbers in `order` at the same
    places of `slots` (offsets from nonzero_counts)."""
    n = order.shape[0]
    n_units = acts.shape[1]
    n_blocks = -(-n_units // UNITS_PER_BLOCK)
    for block in prange(n_blocks):
        start = block * UNITS_PER_BLOCK
        stop = min(n_units, start + UNITS_PER_BLOCK)
        at = offsets[start:stop].copy()
        for i in range(n):
            row = acts[order[i]]
            seen = 0
            for u in range(start, stop):  # most of a sparse source's rows are zero here
                seen |= row[u]
            if not seen & _MAGNITUDE:
                continue
            for u in range(start, stop):
                value = row[u]
                if value & _MAGNITUDE:
                    j = at[u - start]
                    values[j] = value
                    slots[j] = i
                    at[u - start] = j + 1


def fingerprint_blobs(
    acts: np.ndarray, order: np.ndarray, sparse: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(offsets [U + 1] int64 in bytes, values, slots or None) of the units' fingerprints:
    unit u's float16 values at the slots `order` (all of them, or with `sparse` only the
    nonzero ones and their numbers) as little-endian bytes offsets[u]..offsets[u + 1]."""
    bits = np.ascontiguousarray(acts).view(np.uint16)
    order = np.ascontiguousarray(order, dtype=np.int64)
    n_units, n = bits.shape[1], order.size
    if not sparse:
        out = np.empty((n_units, n), dtype=np.uint16)
        units_by_slot(bits, order, out)
        return np.arange(n_units + 1, dtype=np.int64) * (2 * n), _little_endian(out.reshape(-1)), None
    counts = np.zeros(n_units, dtype=np.int64)
    nonzero_counts(bits, order, counts)
    starts = np.zeros(n_units + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    values = np.empty(int(starts[-1]), dtype=np.uint16)
    slots = np.empty(int(starts[-1]), dtype=np.uint16)
    nonzero_by_unit(bits, order, starts, values, slots)
    return starts * 2, _little_endian(values), _little_endian(slots)


def _little_endian(values: np.ndarray) -> np.ndarray:
    return values.astype("<u2", copy=False)  # the stored bytes are little-endian wherever this runs
