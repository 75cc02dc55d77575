"""Turn accumulator state into the rows of the index: stats, histograms, bands, examples.

Runs once at the end of a run, on the host. Histograms are stored at display resolution
(about DISPLAY_BINS bins, each an exact sum of fine bins); band counts come from the fine
bins, so they are exact. Bins and bands are closed on the right: (lo, hi], and the lowest
one also holds its lo (the unit's minimum).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from actscope.indexer.store.writer import repeated

DISPLAY_BINS = 64


def unit_rows(model: str, slug: str, acc, cos: torch.Tensor | None) -> tuple[pa.Table, pa.Table]:
    """(unit_stats, bands) tables of one source."""
    stats, grid = acc.stats, acc.grid.to("cpu")
    hist = stats.hist.cpu()
    n = max(stats.n_tokens, 1)
    mean = (stats.sum / n).cpu()
    var = (stats.sum_sq / n).cpu() - mean**2
    summary = acc.summary(hist, grid)
    n_fired = summary.n_fired
    units = torch.arange(acc.n_units)
    first_bin = grid.bins_of(summary.lo, units)
    last_bin = grid.bins_of(summary.hi, units)
    hist_edges, hist_counts, below_bands = _display_histograms(
        hist, grid, first_bin, last_bin, summary.lo, summary.hi, summary.silent
    )
    stats_table = pa.table(
        {
            "model": repeated(model, acc.n_units),
            "source": repeated(slug, acc.n_units),
            "unit": pa.array(units.numpy().astype(np.int32)),
            "max": pa.array(summary.max.float().numpy()),
            "min": pa.array(summary.min.float().numpy()),
            "mean": pa.array(mean.numpy()),
            "std": pa.array(var.clamp(min=0).sqrt().numpy()),
            "density": pa.array((n_fired / n).numpy()),
            "n_tokens": pa.array(np.full(acc.n_units, stats.n_tokens, dtype=np.int64)),
            "n_fired": pa.array(n_fired.long().numpy()),
            "cos_in_out": pa.array(cos.numpy() if cos is not None else [None] * acc.n_units, type=pa.float32()),
            "hist_edges": hist_edges,
            "hist_counts": hist_counts,
        }
    )
    return stats_table, _band_rows(model, slug, acc, below_bands, grid, summary.lo, summary.hi)


def _display_histograms(
    hist, grid, first_bin, last_bin, lo, hi, zeros
) -> tuple[pa.ListArray, pa.ListArray, np.ndarray]:
    """(edges, counts) list columns: each unit's fine bins first_bin..last_bin merged, in
    runs of equal length, into at most DISPLAY_BINS bins; the outer edges are lo and hi.
    Third, for the bands: the counts below each band start [U, n_bands + 1] (one compiled
    pass over the fine bins gives both).

    For a unit of a sparse source (`zeros` given: tokens where it is silent) a first bin
    [0, 0] holds those tokens; a unit that never fired has only that bin. All units at once: a
    Python loop over units was a tenth of a second of every run's last step.
    """
    hist_np = hist.numpy()
    n_units = hist_np.shape[0]
    f0, f1 = first_bin.numpy().astype(np.int64), last_bin.numpy().astype(np.int64)
    n_fine = f1 - f0 + 1
    group = np.maximum(1, -(-n_fine // DISPLAY_BINS))
    n_counts = -(-n_fine // group)  # bins of each unit, at most DISPLAY_BINS
    k = np.arange(DISPLAY_BINS + 1)[None, :]
    bounds = np.minimum(f0[:, None] + group[:, None] * k, (f1 + 1)[:, None])  # fine-bin edges of the runs
    below = _counts_below(hist_np, np.concatenate([bounds, grid.band_start.numpy()], axis=1))
    run_counts = np.diff(below[:, : DISPLAY_BINS + 1], axis=1)  # [U, DISPLAY_BINS]
    base, width = grid.base.double().numpy(), grid.width.numpy()
    edges = (base[:, None] + f0[:, None] + group[:, None] * k) * width[:, None]
    edges[:, 0] = lo.double().numpy()
    edges[np.arange(n_units), n_counts] = hi.double().numpy()
    n_edges = n_counts + 1
    if zeros is not None:  # sparse sources: [0, 0] first, holding the silent tokens
        silent = (hi.numpy() == 0.0) & (run_counts.sum(1) == 0)
        edges = np.concatenate([np.zeros((n_units, 1)), edges], axis=1)
        edges[:, 1] = 0.0
        run_counts = np.concatenate([zeros.numpy().astype(np.int64)[:, None], run_counts], axis=1)
        n_counts = np.where(silent, 1, n_counts + 1)
        n_edges = n_counts + 1
    return (_ragged(edges, n_edges), _ragged(run_counts, n_counts), below[:, DISPLAY_BINS + 1 :])


def _counts_below(hist: np.ndarray, points: np.ndarray) -> np.ndarray:
    """[U, m]: each unit's count in its fine bins below each of points [U, m]."""
    from actscope.indexer.accumulate.kernels_bands import counts_below

    out = np.empty(points.shape, dtype=np.int64)
    counts_below(np.ascontiguousarray(hist, dtype=np.int64), np.ascontiguousarray(points, dtype=np.int64), out)
    return out


def _ragged(rows: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """A list column of the first lengths[i] values of each row of `rows`."""
    keep = np.arange(rows.shape[1])[None, :] < lengths[:, None]
    return _list_column(rows[keep], lengths)


def _list_column(values: np.ndarray, lengths: np.ndarray) -> pa.ListArray:
    """A list column of consecutive runs of `values`, lengths[i] values in list i."""
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))


def _band_rows(model, slug, acc, below_bands: np.ndarray, grid, lo, hi) -> pa.Table:
    """below_bands [U, n_bands + 1]: each unit's count below each band start."""
    n_units, n_bands = acc.n_units, grid.n_bands
    start = grid.band_start
    below = torch.from_numpy(below_bands)
    counts = below[:, 1:] - below[:, :-1]
    edges = grid.bin_edge(start)
    edges[:, 0] = lo.double()
    edges[:, -1] = hi.double()
    lower = torch.maximum(edges[:, :-1], lo.double()[:, None])
    upper = torch.minimum(edges[:, 1:], hi.double()[:, None])
    # Empty bands get a zero-width interval at the nearest point of the unit's range.
    empty = counts == 0
    point = torch.minimum(lower, hi.double()[:, None])
    lower = torch.where(empty, point, lower)
    upper = torch.where(empty, point, upper)
    levels = torch.tensor(grid.levels, dtype=torch.float64)
    n = max(acc.stats.n_tokens, 1)
    return pa.table(
        {
            "model": repeated(model, n_units * n_bands),
            "source": repeated(slug, n_units * n_bands),
            "unit": pa.array(np.repeat(np.arange(n_units, dtype=np.int32), n_bands)),
            "band": pa.array(np.tile(np.arange(n_bands, dtype=np.int32), n_units)),
            "q_lo": pa.array(levels[:-1].repeat(n_units).numpy()),
            "q_hi": pa.array(levels[1:].repeat(n_units).numpy()),
            "lo": pa.array(lower.reshape(-1).numpy()),
            "hi": pa.array(upper.reshape(-1).numpy()),
            "count": pa.array(counts.reshape(-1).numpy()),
            "share": pa.array((counts.double() / n).reshape(-1).numpy()),
        }
    )


def example_rows(model: str, slug: str, acc, ctx: int) -> pa.Table:
    """Top-k and band-sample examples of one source, windows trimmed to the sequence (and
    to its indexed positions: none after the last one)."""
    n_bands = acc.grid.n_bands
    parts = [_examples(acc.top, ctx, acc.tail, acc.window, lambda g: (g, None))]
    parts.append(_examples(acc.samples, ctx, acc.tail, acc.window, lambda g: (g // n_bands, g % n_bands)))
    columns = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key != "acts"}
    lengths = np.concatenate([p["lengths"] for p in parts])
    values = np.concatenate([p["acts"] for p in parts]).astype(np.float32, copy=False)  # hundreds of MB: no second copy
    n_rows = columns["unit"].size
    band = columns["band"]
    return pa.table(
        {
            "model": repeated(model, n_rows),
            "source": repeated(slug, n_rows),
            "unit": pa.array(columns["unit"].astype(np.int32)),
            "band": pa.array(band.astype(np.int32), mask=band < 0),
            "rank": pa.array(columns["rank"].astype(np.int32)),
            "seq": pa.array(columns["seq"].astype(np.int32)),
            "pos": pa.array(columns["pos"].astype(np.int32)),
            "act": pa.array(columns["act"].astype(np.float32)),
            "start": pa.array(columns["start"].astype(np.int32)),
            "acts": _list_column(values, lengths),
        }
    )


def _examples(examples, ctx: int, tail: int, window: tuple[int, int], split_group) -> dict[str, np.ndarray]:
    """The examples' rows, windows trimmed to the sequence's indexed positions (the last
    `tail` have no value)."""
    before, after = window
    token = examples.token.cpu().numpy()
    real = token >= 0
    groups, rank = np.nonzero(real)
    token = token[real]
    unit, band = split_group(groups)
    band = np.full(groups.size, -1) if band is None else band
    seq, pos = token // ctx, token % ctx
    windows = examples.payload["win"].cpu().numpy()[real]
    lead = np.maximum(0, before - pos)  # window positions before BOS
    trail = np.maximum(0, pos + after - (ctx - 1 - tail))  # positions past the sequence's end
    width = before + 1 + after
    keep = (np.arange(width)[None, :] >= lead[:, None]) & (np.arange(width)[None, :] < width - trail[:, None])
    return {
        "unit": unit,
        "band": band,
        "rank": rank,
        "seq": seq,
        "pos": pos,
        "act": examples.payload["act"].cpu().numpy()[real],
        "start": pos - before + lead,
        "lengths": keep.sum(1),
        "acts": windows[keep],
    }


def reservoir_rows(model: str, acc, ctx: int) -> pa.Table:
    """The reservoir's positions (any source's: they are the same for all), in corpus
    order: slot i of every fingerprint is the activation at row i."""
    ids_np, tokens = acc.fingerprints.positions()
    return pa.table(
        {
            "model": repeated(model, ids_np.size),
            "slot": pa.array(np.arange(ids_np.size, dtype=np.int32)),
            "seq": pa.array((ids_np // ctx).astype(np.int32)),
            "pos": pa.array((ids_np % ctx).astype(np.int32)),
            "token_id": pa.array(tokens.astype(np.int32)),
        }
    )


def fingerprint_rows(model: str, slug: str, acc, sparse: bool) -> pa.Table:
    """One row per unit: its float16 values at the reservoir's slots (little-endian
    bytes); for a sparse kind only the nonzero ones, with their slot numbers (uint16)."""
    from actscope.indexer.accumulate.kernels_fingerprints import fingerprint_blobs

    reservoir = acc.fingerprints
    offsets, values, slots = fingerprint_blobs(reservoir.acts.cpu().numpy(), reservoir.by_position(), sparse)
    n_units = reservoir.n_units
    return pa.table(
        {
            "model": repeated(model, n_units),
            "source": repeated(slug, n_units),
            "unit": pa.array(np.arange(n_units, dtype=np.int32)),
            "slots": pa.nulls(n_units, pa.large_binary()) if slots is None else _blobs(slots, offsets),
            "acts": _blobs(values, offsets),
        }
    )


def _blobs(values: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """A binary column whose row i is the bytes offsets[i]..offsets[i+1] of `values` (no copy)."""
    data = pa.py_buffer(np.ascontiguousarray(values))
    return pa.Array.from_buffers(pa.large_binary(), len(offsets) - 1, [None, pa.py_buffer(offsets), data])
