"""Per-unit fine histogram grids and the quantile bands snapped onto them.

Each unit gets a uniform grid of bins of width w = 2**e over its calibrated range (0
included). Bin j holds the values in ((base + j) w, (base + j + 1) w], i.e. the bin of x is
ceil(x * 2**-e) - 1 - base: a power-of-two scale and integer offsets make that exact in
float32, so the indexer, the tests' float64 reference and the band samples agree on every
token's bin. Bins are closed on the right so that 0 is an edge with x > 0 strictly above
it: the share of positive activations is a sum of bins. The first and last bins are
open-ended, so every value has a bin. Bands are runs of consecutive bins whose edges are
the grid edges nearest to the calibrated quantiles: band counts are exact sums of bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # the kernels (numba) are imported on the compiled path only
    from actscope.indexer.accumulate.kernels_cpu import BinGrid


@dataclass
class Grid:
    scale: torch.Tensor  # [U] float32, 1/w, a power of two
    base: torch.Tensor  # [U] float32, integer-valued: bin 0 is (base * w, (base + 1) * w]
    band_start: torch.Tensor  # [U, n_bands + 1] int64: first bin of each band; last = n_bins
    band_of_bin: torch.Tensor  # [U, n_bins] int64
    levels: tuple[float, ...]  # nominal quantile levels of the band edges
    n_bins: int
    # [U] float32: a value below the k-th largest of the unit's calibration values (k the
    # run's top-k), -inf where none is known. The calibration tokens are part of the run,
    # so no token at or below it can be among the unit's top-k: the accumulators need not
    # look at those even before their top-k fills up.
    top_floor: torch.Tensor | None = None

    @property
    def n_bands(self) -> int:
        return len(self.levels) - 1

    @property
    def width(self) -> torch.Tensor:
        return 1.0 / self.scale.double()

    def bin_edge(self, unit_bins: torch.Tensor) -> torch.Tensor:
        """Activation value (float64) just above which bin `unit_bins` [U, ...] starts."""
        return (self.base.double()[:, None] + unit_bins.double()) * self.width[:, None]

    def bins_of(self, values: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        """Bin (int64) of each value; `units` gives the unit of each value (broadcastable)."""
        raw = torch.ceil(values * self.scale[units]) - 1
        base = self.base[units]
        return (torch.minimum(torch.maximum(raw, base), base + (self.n_bins - 1)) - base).long()

    def bin_grid(self) -> BinGrid:
        """The grid's arrays, for the compiled kernels (CPU only)."""
        from actscope.indexer.accumulate.kernels_cpu import BinGrid

        return BinGrid(
            scale=self.scale.numpy(),
            base=self.base.numpy(),
            n_bins=self.n_bins,
            band_start=self.band_start.numpy(),
            band_of_bin=self.band_of_bin.numpy(),
        )

    def first_positive_bin(self) -> torch.Tensor:
        """[U] the bin starting just above 0 (0 is always inside the grid)."""
        return (-self.base).long()

    def to(self, device) -> Grid:
        return Grid(
            self.scale.to(device),
            self.base.to(device),
            self.band_start.to(device),
            self.band_of_bin.to(device),
            self.levels,
            self.n_bins,
            None if self.top_floor is None else self.top_floor.to(device),
        )

    def state_dict(self) -> dict:
        return {
            "scale": self.scale,
            "base": self.base,
            "band_start": self.band_start,
            "band_of_bin": self.band_of_bin,
            "levels": list(self.levels),
            "n_bins": self.n_bins,
            "top_floor": self.top_floor,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Grid:
        return cls(
            state["scale"],
            state["base"],
            state["band_start"],
            state["band_of_bin"],
            tuple(state["levels"]),
            int(state["n_bins"]),
            state.get("top_floor"),
        )

    def with_top_floor(self, counts: torch.Tensor, k: int) -> Grid:
        """The grid with `top_floor` set from calibration bin counts [U, n_bins]: the lower
        edge of the highest bin j >= 1 with at least k values in bins j and above. Every
        value in those bins is above that edge (bins are closed on the right; the last one
        also holds the values past the grid), so the k-th largest is too."""
        return self._top_floor_of(counts.cumsum(1, dtype=torch.float64), k)

    def _top_floor_of(self, cumulative: torch.Tensor, k: int) -> Grid:
        """`with_top_floor` from the counts' running sums [U, n_bins] (float64)."""
        total = cumulative[:, -1]
        # Bin j has total - cumulative[j - 1] values at or above it: that is >= k for
        # j = 0 .. highest, and bin 0 only counts when the unit has k values at all.
        enough = cumulative[:, :-1] <= (total - k)[:, None]
        return self._top_floor_at(enough.sum(1) - (total < k).long())

    def _top_floor_at(self, highest: torch.Tensor) -> Grid:
        """The grid with `top_floor` the lower edge of bin highest [U] (-1: none known)."""
        edge = self.bin_edge(highest.clamp(min=0)[:, None])[:, 0]
        floor = edge.float()
        floor = torch.where(floor.double() > edge, torch.nextafter(floor, torch.tensor(-torch.inf)), floor)
        self.top_floor = torch.where(highest >= 1, floor, torch.tensor(-torch.inf))
        return self


def uniform_grid(lo: torch.Tensor, hi: torch.Tensor, levels: tuple[float, ...], hist_bins: int) -> Grid:
    """Grid per unit over its calibrated range [lo, hi]; its bands are set by `with_bands`."""
    lo = torch.minimum(lo.double(), torch.zeros(()))  # 0 must be a bin edge inside the grid
    hi = torch.maximum(hi.double(), torch.zeros(()))
    span = (hi - lo).clamp(min=1e-6)
    # Bins never narrower than 2**-20 of the magnitude keep ceil(x * scale) exact.
    magnitude = torch.maximum(lo.abs(), hi.abs()).clamp(min=1e-6)
    width = torch.maximum(span / hist_bins, magnitude * 2.0**-20)
    width = torch.pow(2.0, torch.ceil(torch.log2(width)))
    n_units = lo.numel()
    n_bins = hist_bins + 3  # bins to reach hi: ceil(hi / w) - base <= hist_bins + 2
    return Grid(
        scale=(1.0 / width).float(),
        base=(torch.ceil(lo / width) - 1).float(),
        band_start=torch.zeros(n_units, len(levels), dtype=torch.long),
        # A zero broadcast, not [U, n_bins] of fresh zeros: with_bands replaces it.
        band_of_bin=torch.zeros((), dtype=torch.long).expand(n_units, n_bins),
        levels=tuple(levels),
        n_bins=n_bins,
    )


def add_dense_bin_counts(grid: Grid, acts: torch.Tensor, counts: torch.Tensor) -> None:
    """counts [U, n_bins] (CPU) += the bins of every unit's activations in acts [B, P, U],
    BOS (position 0) left out."""
    import numba

    from actscope.indexer.accumulate.kernels_cpu import dense_bin_counts

    dense_bin_counts(
        acts.float().cpu().contiguous().numpy(),
        grid.bin_grid(),
        counts.numpy(),
        first_pos=1,
        n_parts=numba.get_num_threads(),
    )


def with_bands(grid: Grid, counts: torch.Tensor, top_k: int = 0) -> Grid:
    """The grid with its bands placed from calibration bin counts [U, n_bins] (CPU): each
    band edge at the bin edge where the unit's cumulative count is nearest to its quantile
    level; with `top_k`, also its top floor for that k (Grid.with_top_floor)."""
    from actscope.indexer.accumulate.kernels_bands import bands_of_counts

    n_units, n_bins = counts.shape
    # One compiled pass per unit on every core (see kernels_bands): band_starts and
    # with_top_floor are the same arithmetic in torch.
    band_start = torch.empty(n_units, len(grid.levels), dtype=torch.long)
    band_of_bin = torch.empty(n_units, n_bins, dtype=torch.long)
    highest = torch.empty(n_units, dtype=torch.long)
    bands_of_counts(
        counts.to(torch.long).contiguous().numpy(),
        np.asarray(grid.levels[1:-1], dtype=np.float64),
        top_k,
        band_start.numpy(),
        band_of_bin.numpy(),
        highest.numpy(),
    )
    grid.band_start, grid.band_of_bin = band_start, band_of_bin
    return grid._top_floor_at(highest) if top_k else grid


def build_grid(
    lo: torch.Tensor,
    hi: torch.Tensor,
    levels: tuple[float, ...],
    hist_bins: int,
    units: torch.Tensor,
    values: torch.Tensor,
    top_k: int = 0,
) -> Grid:
    """Grid per unit over its calibrated range [lo, hi], bands (and, given `top_k`, the top
    floor) from calibration (unit, value) pairs."""
    grid = uniform_grid(lo, hi, levels, hist_bins)
    index = grid.bins_of(values, units) + units * grid.n_bins
    n_units = lo.numel()
    counts = torch.bincount(index.reshape(-1), minlength=n_units * grid.n_bins).view(n_units, grid.n_bins)
    return with_bands(grid, counts, top_k)


def band_starts(counts: torch.Tensor, levels: tuple[float, ...]) -> torch.Tensor:
    """[U, n_bands + 1] first bin of each band, from calibration bin counts [U, n_bins]."""
    return _band_starts_of(counts.cumsum(1, dtype=torch.float64), levels)


def _band_starts_of(cumulative: torch.Tensor, levels: tuple[float, ...]) -> torch.Tensor:
    """`band_starts` from the counts' running sums [U, n_bins] (float64)."""
    n_units, n_bins = cumulative.shape
    targets = torch.tensor(levels[1:-1], dtype=torch.float64)[None, :] * cumulative[:, -1:]
    crossing = torch.searchsorted(cumulative, targets).clamp(max=n_bins - 1)  # first bin reaching it
    reached = cumulative.gather(1, crossing)
    before = torch.where(crossing > 0, cumulative.gather(1, (crossing - 1).clamp(min=0)), torch.zeros(()))
    # The crossing bin joins the lower band when most of it lies below the quantile.
    inner = crossing + (reached - targets < targets - before).long()
    inner = torch.cummax(inner.clamp(1, n_bins - 1), dim=1).values
    return torch.cat(
        [torch.zeros(n_units, 1, dtype=torch.long), inner, torch.full((n_units, 1), n_bins, dtype=torch.long)], dim=1
    )
