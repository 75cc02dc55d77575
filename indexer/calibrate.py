"""Calibration: estimate each unit's range and band quantiles from the first tokens.

The estimates only place the bins and band edges; all counts reported in the index come
from the full pass, so a calibration that is off makes bands uneven, never wrong. The
activations of the calibration batches are handed back, so the main pass accumulates
them without a second forward pass (SAE activations are kept as sparse tensors).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .config import NEURON_BAND_LEVELS, SAE_BAND_LEVELS
from .grid import Grid, build_grid
from .sources import Source


def calibrate(runner, batches: Iterator, sources: list[Source], n_tokens: int,
              hist_bins: int) -> tuple[dict[str, Grid], list]:
    """({slug: grid}, [(batch, activations)]) from the first `n_tokens` indexed tokens.

    The batches are taken from `batches`, which the caller then goes on reading; use
    `replay` on the returned list to get their activations back in runner form.
    """
    dense: dict[str, list[torch.Tensor]] = {s.slug: [] for s in sources if s.kind == "neuron"}
    sparse: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {
        s.slug: [] for s in sources if s.kind == "sae"}
    seen, consumed = 0, []
    for batch in batches:
        acts = runner(batch.tokens)
        for slug in dense:
            body = acts[slug][:, 1:, :]
            dense[slug].append(body.reshape(-1, body.shape[-1]).cpu())
        for slug in sparse:
            acts[slug] = acts[slug].to_sparse()
            b, p, units = acts[slug].indices()
            values = acts[slug].values()
            firing = (p > 0) & (values > 0)
            sparse[slug].append((units[firing].cpu(), values[firing].cpu()))
        consumed.append((batch, acts))
        seen += batch.tokens.shape[0] * (batch.tokens.shape[1] - 1)
        if seen >= n_tokens:
            break
    grids = {}
    for source in sources:
        if source.kind == "neuron":
            values = torch.cat(dense[source.slug]) if dense[source.slug] else torch.zeros(1, source.n_units)
            grids[source.slug] = _dense_grid(values, hist_bins)
        else:
            grids[source.slug] = _sparse_grid(sparse[source.slug], source.n_units, hist_bins)
    return grids, consumed


def replay(consumed: list) -> Iterator[tuple]:
    """(batch, activations) of the calibration batches, as the runner gave them."""
    while consumed:
        batch, acts = consumed.pop(0)  # released as soon as it is used
        yield batch, {slug: act.to_dense() if act.is_sparse else act for slug, act in acts.items()}


def _dense_grid(values: torch.Tensor, hist_bins: int) -> Grid:
    return build_grid(values.amin(0), values.amax(0), NEURON_BAND_LEVELS, hist_bins, None, values)


def _sparse_grid(parts, n_units: int, hist_bins: int) -> Grid:
    units = torch.cat([u for u, _ in parts]) if parts else torch.zeros(0, dtype=torch.long)
    values = torch.cat([v for _, v in parts]) if parts else torch.zeros(0)
    lo = torch.full((n_units,), float("inf")).scatter_reduce(0, units, values, "amin")
    hi = torch.zeros(n_units).scatter_reduce(0, units, values, "amax")
    silent = torch.bincount(units, minlength=n_units) == 0
    lo[silent] = 0.0
    grid = build_grid(lo, hi, SAE_BAND_LEVELS, hist_bins, units, values)
    if bool(silent.any()):
        # Features silent during calibration get the source's pooled range and bands:
        # their counts stay exact, only their band edges are less tailored.
        pooled_hi = values.max().reshape(1) if values.numel() else torch.ones(1)
        pooled = build_grid(torch.zeros(1), pooled_hi, SAE_BAND_LEVELS, hist_bins,
                            torch.zeros_like(units), values)
        for name in ("scale", "base", "band_start", "band_of_bin"):
            getattr(grid, name)[silent] = getattr(pooled, name)[0]
    return grid
