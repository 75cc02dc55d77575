"""Fused one-pass kernels for accumulators on the CPU (compiled with numba).

On a CPU, a chain of tensor operations reads the batch a dozen times; these kernels read
each activation once and do everything the torch path does: moments, extremes, the fine
histogram bin, and the top-k and band-sampling candidate tests. They compute exactly the
same bins and candidates as the torch path (tests compare the two). Work is split across
threads by parts of the units, so every unit is updated by one thread, deterministically.

Candidates are written to fixed-size buffers per part; a count above the capacity means
the buffer overflowed (during warm-up, when every token is a candidate) and the caller
then finds that batch's candidates with the torch path instead.

The kernels take their arrays grouped in named records (NamedTuples, which numba compiles
as they are), so a caller cannot swap two arrays of one type unnoticed. Each parallel
kernel unpacks its records into local arrays before its parallel loop, and the helpers
inside that loop take arrays: numba drops writes made through a namedtuple's fields inside
a prange loop (numba issues #5872, #7135, #10338), silently.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
import torch
from numba import njit, prange

CANDIDATE_CAPACITY = 65536  # candidates of each kind buffered per part of the units


class UnitStats(NamedTuple):
    """A source's running statistics, updated in place by the pass kernels (the arrays of
    sampling.RunningStats)."""

    sum: np.ndarray  # [U] float64
    sum_sq: np.ndarray  # [U] float64
    min: np.ndarray  # [U] float32
    max: np.ndarray  # [U] float32
    hist: np.ndarray  # [U, n_bins] int64: fine-bin counts


class BinGrid(NamedTuple):
    """Each unit's fine bins and the bands over them (the arrays of grid.Grid)."""

    scale: np.ndarray  # [U] float32: 1 / bin width, a power of two
    base: np.ndarray  # [U] float32: bin j holds ((base + j) w, (base + j + 1) w]
    n_bins: int
    band_start: np.ndarray  # [U, n_bands + 1] int64: first bin of each band; last = n_bins
    band_of_bin: np.ndarray  # [U, n_bins] int64


class CandidateTests(NamedTuple):
    """What makes a token of the batch a candidate, per unit."""

    top_threshold: np.ndarray  # [U] float32: the value to beat for the top-k
    band_threshold: np.ndarray  # [U, n_bands] float64: the key to get under for a band sample; -inf: none
    band_size: int  # samples kept per band: once it has this many candidates, a band takes no more keys


class Candidates(NamedTuple):
    """Where a pass kernel writes its candidates, one region of `capacity` rows per part of
    the units; a count above the capacity means that region overflowed."""

    top: np.ndarray  # [n_parts, capacity, 3] int64: (b, p, unit) of top-k candidates
    n_top: np.ndarray  # [n_parts] int64
    sample: np.ndarray  # [n_parts, capacity, 4] int64: (b, p, unit, band) of band-sample candidates
    n_sample: np.ndarray  # [n_parts] int64

    def top_overflowed(self) -> bool:
        return bool(self.n_top.max(initial=0) > self.top.shape[1])

    def samples_overflowed(self) -> bool:
        return bool(self.n_sample.max(initial=0) > self.sample.shape[1])


class ExampleState(NamedTuple):
    """Examples kept per group (GroupedTopK): n slots per group, best first."""

    score: np.ndarray  # [G, n] float64: activation (top-k) or sampling key (band samples)
    token: np.ndarray  # [G, n] int64: global token id; -1 in an empty slot
    act: np.ndarray  # [G, n] float32: the unit's activation on the token
    win: np.ndarray  # [G, n, before + 1 + after] float32: activations around it, NaN outside the sequence


class ExampleCandidates(NamedTuple):
    """Tokens offered to insert_examples, one entry each [C]."""

    group: np.ndarray  # int64
    score: np.ndarray  # float64
    token: np.ndarray  # int64: global token id
    b: np.ndarray  # int64: sequence in the batch
    p: np.ndarray  # int64: position in the sequence
    unit: np.ndarray  # int64


class Window(NamedTuple):
    """Positions kept around an example's focus token."""

    before: int
    after: int


class CandidateBuffers:
    """The candidate regions of the pass kernels, kept from batch to batch."""

    def __init__(self) -> None:
        self.top = self.sample = np.zeros((0, 0, 0), dtype=np.int64)

    def reset(self, sample_capacity: int = CANDIDATE_CAPACITY) -> Candidates:
        """Empty buffers, one part per numba thread, with room for `sample_capacity`
        band-sample candidates per part."""
        n_parts = numba.get_num_threads()
        if self.top.shape[:2] != (n_parts, CANDIDATE_CAPACITY):
            self.top = np.zeros((n_parts, CANDIDATE_CAPACITY, 3), dtype=np.int64)
        if self.sample.shape[:2] != (n_parts, sample_capacity):
            self.sample = np.zeros((n_parts, sample_capacity, 4), dtype=np.int64)
        return Candidates(
            top=self.top,
            n_top=np.zeros(n_parts, dtype=np.int64),
            sample=self.sample,
            n_sample=np.zeros(n_parts, dtype=np.int64),
        )


def key_order(keys: torch.Tensor, tail: int = 0) -> np.ndarray:
    """Rows b * P + p of a batch's keys [B, P], BOS and the last `tail` positions
    excluded, by increasing key (ties by row)."""
    n_pos = keys.shape[1]
    width = n_pos - 1 - tail
    order = torch.argsort(keys[:, 1 : n_pos - tail].reshape(-1), stable=True)
    return ((order // width) * n_pos + order % width + 1).numpy()


@njit(inline="always")
def _part(n_units, n_parts, part):
    """(start, stop): the contiguous units of one part, the parts as equal as possible."""
    width = -(-n_units // n_parts)
    start = min(n_units, part * width)
    return start, min(n_units, start + width)


@njit(inline="always")
def _fine_bin(x, scale, offset, last_bin):
    """The fine bin of x, as a float32 in [0, last_bin]; offset = -1 - base.

    ceil(x * 2**e) is exact in float32, and so is adding the integer offset for every
    value inside the grid; the clamp sends the rest (and NaN) to the end bins.
    """
    r = np.ceil(x * scale) + offset
    r = r if r >= 0 else np.float32(0)
    return r if r <= last_bin else last_bin


@njit(inline="always")
def _band_state(band_need, start, stop):
    """(open band thresholds, candidates taken per band, largest open threshold per unit)
    of units start..stop, at the start of a batch."""
    open_bands = band_need[start:stop].copy()
    taken = np.zeros(open_bands.shape, np.int64)
    need = np.empty(stop - start, np.float64)
    for i in range(stop - start):
        need[i] = open_bands[i].max()
    return open_bands, taken, need


@njit(inline="always")
def _offer_sample(key, i, band, band_size, open_bands, taken, need, out, part, n, b, p, u):
    """Band-sample candidate (b, p) of unit u = start + i in `band`, if its key gets in;
    closes the band once it has band_size candidates. Returns the new candidate count."""
    if not key < open_bands[i, band]:
        return n
    taken[i, band] += 1
    if taken[i, band] == band_size:
        open_bands[i, band] = -np.inf
        need[i] = open_bands[i].max()
    if n < out.shape[1]:
        out[part, n, 0] = b
        out[part, n, 1] = p
        out[part, n, 2] = u
        out[part, n, 3] = band
    return n + 1


@njit(inline="always")
def _lowest_open_bin(i, u, key, open_bands, band_start, n_bins):
    """First bin of the lowest band of unit u = start + i that still takes a token with this
    key (n_bins when none does): a value in a lower bin cannot become a band sample."""
    for band in range(open_bands.shape[1]):
        if key < open_bands[i, band]:
            return np.uint32(band_start[u, band])
    return np.uint32(n_bins)


@njit(inline="always")
def _band_events(open_bands):
    """(threshold, part unit) of every band with a finite threshold, by threshold: the keys
    at which the bands stop taking samples, met in that order by rows in key order."""
    n_units, n_bands = open_bands.shape
    event_key = np.empty(n_units * n_bands, np.float64)
    event_unit = np.empty(n_units * n_bands, np.int64)
    n_events = 0
    for i in range(n_units):
        for band in range(n_bands):
            threshold = open_bands[i, band]
            if -np.inf < threshold < np.inf:
                event_key[n_events] = threshold
                event_unit[n_events] = i
                n_events += 1
    by_key = np.argsort(event_key[:n_events])
    return event_key[by_key], event_unit[by_key]


@njit(inline="always")
def _row_stats(row, total, total_sq, low, high):
    """Sums, sums of squares (float64) and extremes of a part's units updated with one row."""
    for i in range(row.shape[0]):
        x = np.float64(row[i])
        total[i] += x
        total_sq[i] += x * x
    for i in range(row.shape[0]):
        low[i] = min(low[i], row[i])
    for i in range(row.shape[0]):
        high[i] = max(high[i], row[i])


@njit(inline="always")
def _four_row_stats(acts, order, k, start, stop, total, total_sq, low, high):
    """_row_stats for rows order[k .. k+3] at once: each unit's running values are read and
    written once per four rows instead of once per row (about 15% of dense_pass)."""
    n_pos = acts.shape[1]
    b0, b1, b2, b3 = order[k] // n_pos, order[k + 1] // n_pos, order[k + 2] // n_pos, order[k + 3] // n_pos
    r0 = acts[b0, order[k] - b0 * n_pos, start:stop]
    r1 = acts[b1, order[k + 1] - b1 * n_pos, start:stop]
    r2 = acts[b2, order[k + 2] - b2 * n_pos, start:stop]
    r3 = acts[b3, order[k + 3] - b3 * n_pos, start:stop]
    for i in range(r0.shape[0]):
        x0, x1, x2, x3 = np.float64(r0[i]), np.float64(r1[i]), np.float64(r2[i]), np.float64(r3[i])
        total[i] += (x0 + x1) + (x2 + x3)
        total_sq[i] += (x0 * x0 + x1 * x1) + (x2 * x2 + x3 * x3)
    for i in range(r0.shape[0]):
        low[i] = min(low[i], min(min(r0[i], r1[i]), min(r2[i], r3[i])))
    for i in range(r0.shape[0]):
        high[i] = max(high[i], max(max(r0[i], r1[i]), max(r2[i], r3[i])))


@njit(inline="always")
def _offer_top(out, part, n, b, p, u):
    """Top-k candidate (b, p) of unit u. Returns the new candidate count."""
    if n < out.shape[1]:
        out[part, n, 0] = b
        out[part, n, 1] = p
        out[part, n, 2] = u
    return n + 1


@njit(parallel=True, cache=True, nogil=True)
def dense_pass(acts, scratch, keys, order, grid, tests, stats, found):
    """Update `stats` (UnitStats) with the batch acts [B, P, U] float32 and write its top-k
    and band-sample candidates (CandidateTests `tests`) to `found` (Candidates), binned on
    `grid` (BinGrid). keys [B * P] float64; order: the rows b * P + p to visit (BOS
    excluded), in increasing key order, ties by row. scratch [n_parts, >= part width,
    n_bins] int16 or int32 (wide enough for the batch's rows), all zeros: each part counts
    its batch there (a fraction of the cache footprint of the int64 histogram), adds the
    counts to `stats.hist` and leaves it zeroed again; kept by the caller, so no call
    allocates (and page-faults) a fresh table.

    The units are split into one contiguous part per thread (found.n_top.shape[0] parts),
    each part walking the rows, so every unit is updated by one thread in the same order
    whatever the number of threads. Each row is visited by several short loops over the
    part's units rather than one long one: with few arrays per loop the compiler
    vectorises them; the moments and extremes take four rows per visit of the units.
    tests.band_threshold [U, n_bands] is each band's sampling threshold (-inf for bands no
    bin maps to). Rows come in increasing key order, so once a band has taken
    band_size candidates in this batch no later row can beat them: the band is closed,
    and a unit with every band closed looks at no more keys. This keeps the candidates
    few even in the first batches, when the thresholds are still infinite.

    Which tokens can become band samples is tested per row with one vectorised compare:
    each unit keeps the first bin of its lowest band still taking the row's key
    (grid.band_start [U, n_bands + 1]), raised as the keys pass the bands'
    thresholds (taken in threshold order) and as bands close. Band thresholds are far
    apart (a rare band's is high, a common band's tiny), so most rows with a low key
    still have no value in a band that would take it, and are passed over at once.
    """
    # The records' arrays, taken out before the parallel loop (see the module docstring).
    scale = grid.scale
    base = grid.base
    n_bins = grid.n_bins
    band_start = grid.band_start
    band_of_bin = grid.band_of_bin
    top_threshold = tests.top_threshold
    band_need = tests.band_threshold
    band_size = tests.band_size
    total = stats.sum
    total_sq = stats.sum_sq
    low = stats.min
    high = stats.max
    hist = stats.hist
    top_out = found.top
    top_count = found.n_top
    sample_out = found.sample
    sample_count = found.n_sample
    n_batch, n_pos, n_units = acts.shape
    n_parts = top_count.shape[0]
    last_bin = np.float32(n_bins - 1)
    for part in prange(n_parts):
        start, stop = _part(n_units, n_parts, part)
        width = stop - start
        unit_scale = scale[start:stop].copy()
        offset = np.empty(width, np.float32)
        for i in range(width):
            offset[i] = np.float32(-1.0) - base[start + i]
        threshold = top_threshold[start:stop].copy()
        open_bands, taken, need = _band_state(band_need, start, stop)
        event_key, event_unit = _band_events(open_bands)
        next_event = 0
        min_bin = np.empty(width, np.uint32)
        for i in range(width):
            min_bin[i] = _lowest_open_bin(i, start + i, -1.0, open_bands, band_start, n_bins)
        part_total = total[start:stop].copy()
        part_total_sq = total_sq[start:stop].copy()
        part_low = low[start:stop].copy()
        part_high = high[start:stop].copy()
        counts = scratch[part]
        bins = np.empty(width, np.uint32)  # unsigned: no negative-index handling
        n_top = 0
        n_sample = 0
        n_blocked = order.shape[0] - order.shape[0] % 4  # rows whose statistics go four at a time
        for k in range(order.shape[0]):
            b = order[k] // n_pos
            p = order[k] - b * n_pos
            row = acts[b, p, start:stop]
            key = keys[order[k]]
            while next_event < event_key.shape[0] and event_key[next_event] <= key:
                i = event_unit[next_event]
                min_bin[i] = _lowest_open_bin(i, start + i, key, open_bands, band_start, n_bins)
                next_event += 1
            if k >= n_blocked:
                _row_stats(row, part_total, part_total_sq, part_low, part_high)
            elif k % 4 == 0:
                _four_row_stats(acts, order, k, start, stop, part_total, part_total_sq, part_low, part_high)
            for i in range(width):
                bins[i] = np.uint32(_fine_bin(row[i], unit_scale[i], offset[i], last_bin))
            for i in range(width):
                counts[i, bins[i]] += 1
            above = 0
            for i in range(width):
                above += row[i] > threshold[i]
            if above:
                for i in range(width):
                    if row[i] > threshold[i]:
                        n_top = _offer_top(top_out, part, n_top, b, p, start + i)
            wanted = 0
            for i in range(width):
                wanted += bins[i] >= min_bin[i]
            if wanted:
                for i in range(width):
                    if bins[i] >= min_bin[i]:
                        u = start + i
                        offered = _offer_sample(
                            key,
                            i,
                            band_of_bin[u, bins[i]],
                            band_size,
                            open_bands,
                            taken,
                            need,
                            sample_out,
                            part,
                            n_sample,
                            b,
                            p,
                            u,
                        )
                        if offered != n_sample:  # taken: its band may have closed
                            min_bin[i] = _lowest_open_bin(i, u, key, open_bands, band_start, n_bins)
                        n_sample = offered
        for i in range(width):
            total[start + i] = part_total[i]
            total_sq[start + i] = part_total_sq[i]
            low[start + i] = part_low[i]
            high[start + i] = part_high[i]
            for j in range(n_bins):
                hist[start + i, j] += counts[i, j]
                counts[i, j] = 0
        top_count[part] = n_top
        sample_count[part] = n_sample


BIN_COUNT_UNITS = 64  # units whose bin counts one thread fills at a time: 64 rows of counts stay in its cache


@njit(parallel=True, cache=True, nogil=True)
def dense_bin_counts(acts, grid, counts, first_pos, n_parts):
    """counts [U, n_bins] += the bins on `grid` (BinGrid; those dense_pass computes) of
    acts [B, P, U] at positions first_pos and after, BIN_COUNT_UNITS units at a time
    across the threads (`n_parts` is kept for callers; the blocks are finer)."""
    scale = grid.scale
    base = grid.base
    n_bins = grid.n_bins
    n_batch, n_pos, n_units = acts.shape
    last_bin = np.float32(n_bins - 1)
    n_blocks = -(-n_units // BIN_COUNT_UNITS)
    for block in prange(n_blocks):
        start = block * BIN_COUNT_UNITS
        stop = min(n_units, start + BIN_COUNT_UNITS)
        width = stop - start
        offset = np.empty(width, np.float32)
        for i in range(width):
            offset[i] = np.float32(-1.0) - base[start + i]
        unit_scale = scale[start:stop].copy()
        bins = np.empty(width, np.uint32)
        for b in range(n_batch):
            for p in range(first_pos, n_pos):
                row = acts[b, p, start:stop]
                for i in range(width):
                    bins[i] = np.uint32(_fine_bin(row[i], unit_scale[i], offset[i], last_bin))
                for i in range(width):
                    counts[start + i, bins[i]] += 1


@njit(inline="always")
def _insert(g, s, t, b, p, u, acts, before, after, descending, state_score, state_token, state_act, state_win):
    """Candidate token t = (b, p) of unit u, score s, into group g's row of n slots, kept
    sorted best first (ties: smaller token first); its activation and window (NaN outside
    the sequence) are read from acts [B, P, U] only if it gets in, and only the slots
    after the insertion point move."""
    n_pos = acts.shape[1]
    n = state_score.shape[1]
    pos = n
    while pos > 0:
        other_s = state_score[g, pos - 1]
        other_t = state_token[g, pos - 1]
        if other_t >= 0:  # a real entry: is the candidate better?
            if descending:
                ahead = s > other_s or (s == other_s and t < other_t)
            else:
                ahead = s < other_s or (s == other_s and t < other_t)
            if not ahead:
                break
        pos -= 1
    if pos == n:
        return
    for k in range(n - 1, pos, -1):
        state_score[g, k] = state_score[g, k - 1]
        state_token[g, k] = state_token[g, k - 1]
        state_act[g, k] = state_act[g, k - 1]
        state_win[g, k, :] = state_win[g, k - 1, :]
    state_score[g, pos] = s
    state_token[g, pos] = t
    state_act[g, pos] = acts[b, p, u]
    for w in range(before + 1 + after):
        q = p - before + w
        state_win[g, pos, w] = acts[b, q, u] if 0 <= q < n_pos else np.nan


@njit(parallel=True, cache=True, nogil=True)
def insert_examples(offered, acts, window, examples, descending, n_parts):
    """GroupedTopK.add for example candidates `offered` (ExampleCandidates), in place in
    `examples` (ExampleState), their windows (Window) read from acts (see _insert).

    Only the candidates that get in cost anything beyond a comparison with the group's
    worst entry. Reading a window is a cache miss per position, so the groups are shared
    out among n_parts threads (by group modulo n_parts: each group is still updated by one
    thread, in candidate order).
    """
    group = offered.group
    score = offered.score
    token = offered.token
    b = offered.b
    p = offered.p
    unit = offered.unit
    before = window.before
    after = window.after
    state_score = examples.score
    state_token = examples.token
    state_act = examples.act
    state_win = examples.win
    for part in prange(n_parts):
        for c in range(group.shape[0]):
            if group[c] % n_parts == part:
                _insert(
                    group[c],
                    score[c],
                    token[c],
                    b[c],
                    p[c],
                    unit[c],
                    acts,
                    before,
                    after,
                    descending,
                    state_score,
                    state_token,
                    state_act,
                    state_win,
                )


@njit(parallel=True, cache=True, nogil=True)
def insert_candidates(acts, keys, found, top, samples, first_seq, window, n_bands, with_top, with_samples):
    """Merge a pass kernel's candidates `found` (Candidates) into the top-k `top` (scored by
    activation, group = unit) and the band samples `samples` (ExampleState both; scored by
    key, group = unit * n_bands + band), in place, with their windows (Window).

    A part's candidates are all of its own units, so the parts run in parallel without
    sharing a group. `with_top` / `with_samples`: which kind to merge (a kind whose buffer
    overflowed is merged by the caller instead).
    """
    before = window.before
    after = window.after
    top_out = found.top
    top_count = found.n_top
    sample_out = found.sample
    sample_count = found.n_sample
    top_score = top.score
    top_token = top.token
    top_act = top.act
    top_win = top.win
    sample_score = samples.score
    sample_token = samples.token
    sample_act = samples.act
    sample_win = samples.win
    n_pos = acts.shape[1]
    for part in prange(top_count.shape[0]):
        if with_top:
            for c in range(top_count[part]):
                b, p, u = top_out[part, c, 0], top_out[part, c, 1], top_out[part, c, 2]
                _insert(
                    u,
                    np.float64(acts[b, p, u]),
                    (first_seq + b) * n_pos + p,
                    b,
                    p,
                    u,
                    acts,
                    before,
                    after,
                    True,
                    top_score,
                    top_token,
                    top_act,
                    top_win,
                )
        if with_samples:
            for c in range(sample_count[part]):
                b, p, u = sample_out[part, c, 0], sample_out[part, c, 1], sample_out[part, c, 2]
                _insert(
                    u * n_bands + sample_out[part, c, 3],
                    keys[b * n_pos + p],
                    (first_seq + b) * n_pos + p,
                    b,
                    p,
                    u,
                    acts,
                    before,
                    after,
                    False,
                    sample_score,
                    sample_token,
                    sample_act,
                    sample_win,
                )


@njit(parallel=True, cache=True, nogil=True)
def row_extremes(values, top_index, top_value, bottom_index, bottom_value):
    """The n largest and n smallest entries of each row of values [R, C], best first (ties:
    smaller column first); n = top_index.shape[1] <= C. One read of each row."""
    n_rows, n_cols = values.shape
    n = top_index.shape[1]
    for r in prange(n_rows):
        row = values[r]
        for k in range(n):  # the first n columns, sorted, start both lists
            top_value[r, k] = -np.inf
            bottom_value[r, k] = np.inf
        filled = 0
        for c in range(n_cols):
            x = row[c]
            if filled < n or x > top_value[r, n - 1]:
                k = min(filled, n - 1)
                while k > 0 and x > top_value[r, k - 1]:
                    top_value[r, k] = top_value[r, k - 1]
                    top_index[r, k] = top_index[r, k - 1]
                    k -= 1
                top_value[r, k] = x
                top_index[r, k] = c
            if filled < n or x < bottom_value[r, n - 1]:
                k = min(filled, n - 1)
                while k > 0 and x < bottom_value[r, k - 1]:
                    bottom_value[r, k] = bottom_value[r, k - 1]
                    bottom_index[r, k] = bottom_index[r, k - 1]
                    k -= 1
                bottom_value[r, k] = x
                bottom_index[r, k] = c
            filled += 1  # noqa: SIM113 (numba compiles this loop; enumerate would not help it)


@njit(inline="always")
def _firing_update(
    x,
    u,
    i,
    key,
    b,
    p,
    scale,
    base,
    last_bin,
    total,
    total_sq,
    low,
    high,
    hist,
    top_threshold,
    band_of_bin,
    band_size,
    open_bands,
    taken,
    need,
    top_out,
    sample_out,
    part,
    n_top,
    n_sample,
):
    """A sparse pass's updates for firing value x of unit u = start + i at row (b, p):
    moments, extremes, its fine bin, and its top-k and band-sample candidacy. Returns the
    new (top, sample) candidate counts."""
    xd = np.float64(x)
    total[u] += xd
    total_sq[u] += xd * xd
    low[u] = min(low[u], x)
    high[u] = max(high[u], x)
    j = np.uint32(_fine_bin(x, scale[u], np.float32(-1.0) - base[u], last_bin))
    hist[u, j] += 1
    if x > top_threshold[u]:
        n_top = _offer_top(top_out, part, n_top, b, p, u)
    if key < need[i]:
        n_sample = _offer_sample(
            key, i, band_of_bin[u, j], band_size, open_bands, taken, need, sample_out, part, n_sample, b, p, u
        )
    return n_top, n_sample


FIRING_CHUNK = 16  # units whose activations are tested for firing at once


@njit(parallel=True, cache=True, nogil=True)
def sparse_pass(acts, keys, order, grid, tests, stats, found):
    """dense_pass for a sparse source: only firing values (act > 0) count and are binned.

    Most values are 0, so each row is scanned in chunks of FIRING_CHUNK units: the largest
    bit pattern of a chunk, as int32, is positive exactly when some value in it is above 0
    (or NaN), a test that vectorises; only such chunks are looked at value by value.
    """
    # The records' arrays, taken out before the parallel loop (see the module docstring).
    scale = grid.scale
    base = grid.base
    n_bins = grid.n_bins
    band_of_bin = grid.band_of_bin
    top_threshold = tests.top_threshold
    band_need = tests.band_threshold
    band_size = tests.band_size
    total = stats.sum
    total_sq = stats.sum_sq
    low = stats.min
    high = stats.max
    hist = stats.hist
    top_out = found.top
    top_count = found.n_top
    sample_out = found.sample
    sample_count = found.n_sample
    n_batch, n_pos, n_units = acts.shape
    bits = acts.view(np.int32)
    n_parts = top_count.shape[0]
    last_bin = np.float32(n_bins - 1)
    for part in prange(n_parts):
        start, stop = _part(n_units, n_parts, part)
        width = stop - start
        n_top = 0
        n_sample = 0
        firing = np.empty(width, np.int64)
        open_bands, taken, need = _band_state(band_need, start, stop)
        for k in range(order.shape[0]):
            b = order[k] // n_pos
            p = order[k] - b * n_pos
            # Indexing slices from 0 lets the compiler drop negative-index handling and vectorise.
            row_bits = bits[b, p, start:stop]
            row = acts[b, p, start:stop]
            key = keys[order[k]]
            # Pass 1: the row's firing units.
            n_firing = 0
            for chunk in range(0, width - FIRING_CHUNK + 1, FIRING_CHUNK):
                largest = np.int32(0)
                for i in range(FIRING_CHUNK):  # a constant trip count: one vector max
                    largest = max(largest, row_bits[chunk + i])
                if largest > 0:
                    for i in range(chunk, chunk + FIRING_CHUNK):
                        if row[i] > 0:
                            firing[n_firing] = i
                            n_firing += 1
            for i in range(width - width % FIRING_CHUNK, width):
                if row[i] > 0:
                    firing[n_firing] = i
                    n_firing += 1
            # Pass 2: their updates, whose memory accesses can all be in flight at once.
            for f in range(n_firing):
                i = firing[f]
                u = start + i
                n_top, n_sample = _firing_update(
                    acts[b, p, u],
                    u,
                    i,
                    key,
                    b,
                    p,
                    scale,
                    base,
                    last_bin,
                    total,
                    total_sq,
                    low,
                    high,
                    hist,
                    top_threshold,
                    band_of_bin,
                    band_size,
                    open_bands,
                    taken,
                    need,
                    top_out,
                    sample_out,
                    part,
                    n_top,
                    n_sample,
                )
        top_count[part] = n_top
        sample_count[part] = n_sample


@njit(parallel=True, cache=True, nogil=True)
def sparse_topk_pass(values, indices, keys, order, grid, tests, stats, found):
    """sparse_pass for a TopK SAE, from its top-k values and indices [B, P, k] instead of the
    dense activations: only k entries per row are read instead of every unit's value.

    Gives the same state as sparse_pass on the dense activations those entries make (each
    unit's updates come in the same row order; candidates of one row may be in another
    unit order, which no state depends on).
    """
    # The records' arrays, taken out before the parallel loop (see the module docstring).
    scale = grid.scale
    base = grid.base
    n_bins = grid.n_bins
    band_of_bin = grid.band_of_bin
    top_threshold = tests.top_threshold
    band_need = tests.band_threshold
    band_size = tests.band_size
    total = stats.sum
    total_sq = stats.sum_sq
    low = stats.min
    high = stats.max
    hist = stats.hist
    top_out = found.top
    top_count = found.n_top
    sample_out = found.sample
    sample_count = found.n_sample
    n_batch, n_pos, k = values.shape
    n_units = hist.shape[0]
    n_parts = top_count.shape[0]
    last_bin = np.float32(n_bins - 1)
    for part in prange(n_parts):
        start, stop = _part(n_units, n_parts, part)
        n_top = 0
        n_sample = 0
        open_bands, taken, need = _band_state(band_need, start, stop)
        for r in range(order.shape[0]):
            b = order[r] // n_pos
            p = order[r] - b * n_pos
            key = keys[order[r]]
            row = values[b, p]
            row_units = indices[b, p]
            for e in range(k):
                u = row_units[e]
                x = row[e]
                if u < start or u >= stop or not x > 0:
                    continue
                n_top, n_sample = _firing_update(
                    x,
                    u,
                    u - start,
                    key,
                    b,
                    p,
                    scale,
                    base,
                    last_bin,
                    total,
                    total_sq,
                    low,
                    high,
                    hist,
                    top_threshold,
                    band_of_bin,
                    band_size,
                    open_bands,
                    taken,
                    need,
                    top_out,
                    sample_out,
                    part,
                    n_top,
                    n_sample,
                )
        top_count[part] = n_top
        sample_count[part] = n_sample
