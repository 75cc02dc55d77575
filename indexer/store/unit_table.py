"""A source's unit table: every unit's headline numbers, as columns, with its sort orders.

Built once per source (the index never changes while it is open): each sortable column
is argsorted once, both ways, so a request filters with one boolean mask and reads a page
off a precomputed order (about a millisecond for 65,536 units, where sorting Python rows
took about a hundred). A table the store cannot keep in memory sorts only the order a
request asks for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

SORTABLE = ("unit", "max", "mean", "density", "cos_in_out")


@dataclass(frozen=True)
class TableRow:
    """One row of a source's unit table."""

    unit: int
    max: float
    mean: float
    density: float
    cos_in_out: float | None
    top_token_id: int | None  # the focus token of the unit's strongest example


@dataclass
class UnitTable:
    """Columns in unit order; a missing value is NaN (cos_in_out) or -1 (top_token_id)."""

    unit: np.ndarray
    max: np.ndarray
    mean: np.ndarray
    density: np.ndarray
    cos_in_out: np.ndarray
    top_token_id: np.ndarray
    _orders: dict[tuple[str, str], np.ndarray] = field(default_factory=dict, repr=False)

    @classmethod
    def from_rows(cls, rows: list[tuple]) -> UnitTable:
        """From (unit, max, mean, density, cos_in_out or None, top token id or None) rows."""
        n = len(rows)
        cols = list(zip(*rows)) if rows else [()] * 6
        table = cls(
            unit=np.fromiter(cols[0], dtype=np.int64, count=n),
            max=np.fromiter(cols[1], dtype=np.float64, count=n),
            mean=np.fromiter(cols[2], dtype=np.float64, count=n),
            density=np.fromiter(cols[3], dtype=np.float64, count=n),
            cos_in_out=np.fromiter((np.nan if c is None else c for c in cols[4]), dtype=np.float64, count=n),
            top_token_id=np.fromiter((-1 if t is None else t for t in cols[5]), dtype=np.int64, count=n),
        )
        return table

    def sort_all(self) -> None:
        """Every order now (a table kept in memory: its size then stays `nbytes_sorted`)."""
        for col in self.columns:
            self.order(col, "asc")

    @property
    def nbytes(self) -> int:
        """Bytes of its columns and of the orders computed so far."""
        columns = (self.unit, self.max, self.mean, self.density, self.cos_in_out, self.top_token_id)
        return sum(c.nbytes for c in columns) + sum(o.nbytes for o in list(self._orders.values()))

    @property
    def nbytes_sorted(self) -> int:
        """Bytes once every order is computed (two int32 orders per sortable column)."""
        return self.nbytes - sum(o.nbytes for o in list(self._orders.values())) + 8 * len(self) * len(self.columns)

    def __len__(self) -> int:
        return len(self.unit)

    @cached_property
    def columns(self) -> tuple[str, ...]:
        """The sortable columns that have a value for at least one unit of the source
        (an SAE feature has no input weight, so no cos(w_in, w_out)). Found once: a
        scan of every unit per column cost a table page about a millisecond."""
        return tuple(c for c in SORTABLE if len(self) == 0 or not np.isnan(getattr(self, c)).all())

    @cached_property
    def n_dead(self) -> int:
        """Units that never fired (activation never above 0 on an indexed token)."""
        return int((self.density <= 0).sum())

    def _sort_orders(self, col: str) -> tuple[np.ndarray, np.ndarray]:
        # Ties in unit order both ways; units without a value last both ways.
        values = getattr(self, col)
        missing = np.isnan(values)
        filled = np.where(missing, 0.0, values)
        asc = np.lexsort((self.unit, filled, missing))
        desc = np.lexsort((self.unit, -filled, missing))
        return asc.astype(np.int32), desc.astype(np.int32)

    def order(self, sort: str, order: str) -> np.ndarray:
        """Row positions sorted by `sort` ("asc" or "desc"); `sort` must be in `columns`."""
        found = self._orders.get((sort, order))
        if found is None:
            asc, desc = self._sort_orders(sort)
            self._orders[(sort, "asc")], self._orders[(sort, "desc")] = asc, desc
            found = asc if order == "asc" else desc
        return found

    def select(self, sort: str, order: str, keep: np.ndarray | None) -> np.ndarray:
        """Row positions of the rows `keep` (a mask in unit order; None: all), sorted."""
        rows = self.order(sort, order)
        return rows if keep is None else rows[keep[rows]]

    def row(self, i: int) -> TableRow:
        c, t = float(self.cos_in_out[i]), int(self.top_token_id[i])
        return TableRow(
            int(self.unit[i]),
            float(self.max[i]),
            float(self.mean[i]),
            float(self.density[i]),
            None if c != c else c,
            None if t < 0 else t,
        )
