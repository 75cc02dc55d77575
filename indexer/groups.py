"""Groups of sources that fit a memory budget for their accumulator state (--max-state-gb).

When one process cannot hold every unit's state at once, the run splits its sources into
groups whose state fits, and each group streams the corpus on its own: one pass over the
corpus per group, one file holding them all, the same index as one group would give
(every source's calibration, sampling keys and state depend on its own activations and
the corpus positions only). Sources are kept whole and in their order: a source larger
than the budget is a group of its own, and the plan says it is over.

A unit's state is measured, not guessed: the bytes of the tensors of a real accumulator
of the source's kind with the run's options (top-k, band size, window, histogram bins),
plus, for a dense source, the activations its calibration holds until the first batches
are accumulated (4 bytes per calibration token).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

GB = 10**9
_PROBE_UNITS = 64  # units of the accumulator a unit's state is measured on


@dataclass
class UnitGroup:
    """Sources streamed together in one pass over the corpus."""

    sources: list  # [kinds.Source], in the run's order
    state_bytes: int

    @property
    def n_units(self) -> int:
        return sum(source.n_units for source in self.sources)


@dataclass
class GroupPlan:
    groups: list[UnitGroup]
    bytes_per_unit: dict[str, int]  # by source slug
    budget_bytes: int

    @property
    def passes(self) -> int:
        return len(self.groups)

    def describe(self) -> str:
        """The plan as the run prints it before it starts."""
        n_units = sum(group.n_units for group in self.groups)
        plural = "s" if self.passes != 1 else ""
        lines = [
            f"--max-state-gb {self.budget_bytes / GB:g}: {n_units:,} units in {self.passes} group{plural}, "
            f"{self.passes} pass{'es' if plural else ''} over the corpus"
        ]
        for number, group in enumerate(self.groups, 1):
            over = " (over the budget: a source is never split)" if group.state_bytes > self.budget_bytes else ""
            lines.append(
                f"  group {number}: {group.n_units:,} units, {_size(group.state_bytes)} of state: "
                f"{_names([source.slug for source in group.sources])}{over}"
            )
        sizes = sorted(set(self.bytes_per_unit.values()), reverse=True)
        of_size = [_names([slug for slug, size in self.bytes_per_unit.items() if size == each]) for each in sizes]
        lines.append(
            "  state bytes per unit: " + "; ".join(f"{each:,} ({names})" for each, names in zip(sizes, of_size))
        )
        return "\n".join(lines)


def _size(n_bytes: int) -> str:
    return f"{n_bytes / GB:,.2f} GB" if n_bytes >= GB else f"{n_bytes / 10**6:,.1f} MB"


def _names(slugs: list[str]) -> str:
    return ", ".join(slugs) if len(slugs) <= 4 else f"{slugs[0]} .. {slugs[-1]} ({len(slugs)} sources)"


def plan_groups(sources: list, config, budget_gb: float) -> GroupPlan:
    """Consecutive sources packed into groups of at most `budget_gb` of state each."""
    budget = int(budget_gb * GB)
    per_unit = {source.slug: state_bytes_per_unit(source, config) for source in sources}
    groups: list[UnitGroup] = []
    current: list = []
    used = 0
    for source in sources:
        size = per_unit[source.slug] * source.n_units
        if current and used + size > budget:
            groups.append(UnitGroup(current, used))
            current, used = [], 0
        current.append(source)
        used += size
    if current:
        groups.append(UnitGroup(current, used))
    return GroupPlan(groups, per_unit, budget)


def state_bytes_per_unit(source, config) -> int:
    """Bytes a unit of `source` holds during a run with `config`'s options (see the module)."""
    from actscope.indexer.accumulate.grid import uniform_grid, with_bands
    from actscope.indexer.run import new_accumulators

    n = _PROBE_UNITS
    levels = source.kind.band_levels
    grid = uniform_grid(torch.zeros(n), torch.ones(n), levels, config.hist_bins)
    grid = with_bands(grid, torch.ones(n, grid.n_bins, dtype=torch.long), config.top_k)
    probe = type(source)(source.slug, source.hook_name, source.kind, source.layer, n)
    accumulator = new_accumulators([probe], {source.slug: grid}, config, "cpu")[source.slug]
    held = _tensor_bytes(accumulator.state_dict()) + _tensor_bytes(grid.state_dict())
    per_unit = -(-held // n)
    if not source.kind.sparse:  # calibration keeps a dense source's activations of its tokens
        per_unit += 4 * config.calibration_tokens * config.ctx // (config.ctx - 1)
    return per_unit


def _tensor_bytes(state) -> int:
    if isinstance(state, torch.Tensor):
        return state.numel() * state.element_size()
    if isinstance(state, dict):
        return sum(_tensor_bytes(value) for value in state.values())
    if isinstance(state, (list, tuple)):
        return sum(_tensor_bytes(value) for value in state)
    return 0
