"""The compiled kernels of calibration's grids and of the tables written after the last
batch, each against a plain numpy or torch reference computed here (or by the tensor
code they replaced, which the package keeps): the same values, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _counts(kind: str, n_units: int, n_bins: int, generator: torch.Generator) -> torch.Tensor:
    if kind == "sparse":
        fired = torch.rand(n_units, n_bins, generator=generator) < 0.02
        return fired.long() * torch.randint(1, 5, (n_units, n_bins), generator=generator)
    if kind == "few":  # most units have fewer values than the top-k, some none
        counts = torch.zeros(n_units, n_bins, dtype=torch.long)
        counts[::3, 2] = 7
        counts[1::3, -1] = 30
        return counts
    if kind == "large":
        return torch.randint(0, 10**9, (n_units, n_bins), generator=generator)
    return torch.randint(0, 40, (n_units, n_bins), generator=generator)


@pytest.mark.parametrize("kind", ["sparse", "few", "large", "dense"])
@pytest.mark.parametrize("levels", [(0.0, 0.5, 0.9, 0.99, 1.0), (0.0, 1.0), (0.0, 0.001, 0.5, 0.999, 1.0)])
def test_bands_and_top_floor_match_the_tensor_reference(kind, levels):
    from actscope.indexer.accumulate.grid import band_starts, uniform_grid, with_bands

    generator = torch.Generator().manual_seed(7)
    n_units, hist_bins = 300, 61
    lo = -torch.rand(n_units, generator=generator)
    hi = torch.rand(n_units, generator=generator) * 5
    counts = _counts(kind, n_units, hist_bins + 3, generator)
    expected_start = band_starts(counts, levels)
    marks = torch.zeros_like(counts).scatter_add_(1, expected_start[:, 1:-1], torch.ones_like(expected_start[:, 1:-1]))
    for top_k in (0, 1, 20):
        grid = with_bands(uniform_grid(lo, hi, levels, hist_bins), counts, top_k)
        assert torch.equal(grid.band_start, expected_start)
        assert torch.equal(grid.band_of_bin, marks.cumsum(1))
        if top_k:
            reference = uniform_grid(lo, hi, levels, hist_bins).with_top_floor(counts, top_k)
            assert torch.equal(grid.top_floor, reference.top_floor)
        else:
            assert grid.top_floor is None


def test_dense_bin_counts_match_bins_of():
    from actscope.indexer.accumulate.grid import add_dense_bin_counts, uniform_grid

    generator = torch.Generator().manual_seed(1)
    n_units = 150  # more than one block of units, and a partial one
    acts = torch.randn(3, 20, n_units, generator=generator) * 2
    acts[0, 3, :5] = 1e6  # past the grid: the end bins
    acts[1, 4, 5:10] = -1e6
    grid = uniform_grid(acts[:, 1:10].amin((0, 1)), acts[:, 1:10].amax((0, 1)), (0.0, 0.5, 1.0), 32)
    counts = torch.zeros(n_units, grid.n_bins, dtype=torch.long)
    add_dense_bin_counts(grid, acts, counts)
    bins = grid.bins_of(acts[:, 1:].reshape(-1, n_units), torch.arange(n_units)[None, :])
    expected = torch.zeros_like(counts).scatter_add_(1, bins.T.contiguous(), torch.ones_like(bins.T.contiguous()))
    assert torch.equal(counts, expected)


def test_counts_below_are_running_sums():
    from actscope.indexer.accumulate.finalize import _counts_below

    rng = np.random.default_rng(2)
    hist = rng.integers(0, 1000, (130, 37))
    points = rng.integers(0, 38, (130, 9))
    cumulative = np.concatenate([np.zeros((130, 1), dtype=np.int64), np.cumsum(hist, axis=1)], axis=1)
    assert np.array_equal(_counts_below(hist, points), np.take_along_axis(cumulative, points, axis=1))


def _row_extremes(values: np.ndarray, n: int):
    from actscope.indexer.accumulate.kernels_cpu import row_extremes

    out = [np.empty((len(values), n), dtype) for dtype in (np.int64, np.float32, np.int64, np.float32)]
    row_extremes(values, *out)
    return out


@pytest.mark.parametrize("shape", [(40, 1000), (5, 10), (9, 45), (3, 33)])
def test_row_extremes_match_a_stable_sort(shape):
    """Largest and smallest n per row, ties to the smaller column: a stable sort's order
    (values with many ties, and rows sorted both ways, whose every column enters)."""
    rng = np.random.default_rng(3)
    values = rng.integers(-4, 5, shape).astype(np.float32)
    values[0] = np.sort(rng.standard_normal(shape[1]).astype(np.float32))
    values[1] = values[0][::-1]
    values[2] = rng.standard_normal(shape[1]).astype(np.float32) * 1e30
    n = 10
    top_ids, top_values, bottom_ids, bottom_values = _row_extremes(values, n)
    top = np.argsort(-values, axis=1, kind="stable")[:, :n]
    bottom = np.argsort(values, axis=1, kind="stable")[:, :n]
    assert np.array_equal(top_ids, top) and np.array_equal(bottom_ids, bottom)
    assert np.array_equal(top_values, np.take_along_axis(values, top, 1))
    assert np.array_equal(bottom_values, np.take_along_axis(values, bottom, 1))


def _reference_blobs(acts: np.ndarray, order: np.ndarray, sparse: bool):
    """The fingerprint rows the numpy way: [U, n] float16 by slot, nonzero() for the sparse."""
    by_unit = np.ascontiguousarray(acts[order].T)
    n_units, n = by_unit.shape
    if not sparse:
        return [by_unit[u].tobytes() for u in range(n_units)], None
    values, slots = [], []
    for u in range(n_units):
        (where,) = np.nonzero(by_unit[u])
        values.append(by_unit[u, where].tobytes())
        slots.append(where.astype("<u2").tobytes())
    return values, slots


@pytest.mark.parametrize("n_units", [1, 63, 64, 200])
@pytest.mark.parametrize("sparse", [False, True])
def test_fingerprint_blobs_match_numpy(n_units, sparse):
    """Every unit's bytes, and for sparse kinds the nonzero ones (-0.0 is zero, NaN is not)
    with their slot numbers, as numpy's transpose and nonzero give them."""
    from actscope.indexer.accumulate.kernels_fingerprints import fingerprint_blobs

    rng = np.random.default_rng(4)
    slots, n = 150, 130  # not every slot filled; more slots than a tile
    acts = rng.standard_normal((slots, n_units)).astype(np.float16)
    acts[rng.random((slots, n_units)) < 0.8] = 0
    specials = np.array([-0.0, np.nan, np.inf, -np.inf, 6e-8], dtype=np.float16)
    acts.reshape(-1)[rng.integers(0, acts.size, 40)] = rng.choice(specials, 40)
    order = rng.permutation(slots)[:n]
    offsets, values, where = fingerprint_blobs(acts, order, sparse)
    expected_values, expected_slots = _reference_blobs(acts, order, sparse)
    data = values.tobytes()
    assert [data[offsets[u] : offsets[u + 1]] for u in range(n_units)] == expected_values
    if sparse:
        assert where is not None
        slot_bytes = where.tobytes()
        assert [slot_bytes[offsets[u] : offsets[u + 1]] for u in range(n_units)] == expected_slots
    else:
        assert where is None
