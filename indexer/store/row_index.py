"""Where each unit's rows are in the file, by rowid, for unit pages read with SQL.

Filtering a large table by (source, unit) costs DuckDB a scan of the source's row groups
(about 15 ms a query on a 1,048,576-unit index, where the unit's rows are a few); a
`rowid BETWEEN` filter is pushed into the scan and reads only the vectors holding them
(about 1 to 3 ms). The writer inserts each table in unit order (the examples as two runs
per source: every unit's top examples, then every unit's band samples), so each unit's
rows are one contiguous rowid range per run. `RowIndex.load` finds those ranges with one
pass over the source's rows and returns None if any is not contiguous (the callers then
filter by unit as before). It takes 8 bytes a unit and table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# (table, part): the runs a unit's rows may have; examples in two, top (band NULL) and bands.
RUNS = ("unit_stats", "bands", "logits", "examples top", "examples bands")


@dataclass
class Ranges:
    """Rows of unit u: rowids base + first[u] .. base + first[u] + count[u] - 1."""

    base: int
    first: np.ndarray  # int32 [n_units]
    count: np.ndarray  # int32 [n_units]

    def of(self, unit: int) -> tuple[int, int] | None:
        """(first rowid, last rowid) of the unit's rows, or None if it has none."""
        n = int(self.count[unit])
        if n == 0:
            return None
        first = self.base + int(self.first[unit])
        return first, first + n - 1


@dataclass
class RowIndex:
    n_units: int
    runs: dict[str, Ranges]

    @property
    def nbytes(self) -> int:
        return sum(r.first.nbytes + r.count.nbytes for r in self.runs.values())

    @staticmethod
    def size_estimate(n_units: int) -> int:
        return 8 * n_units * len(RUNS)

    def of(self, run: str, unit: int) -> tuple[int, int] | None:
        if not 0 <= unit < self.n_units:
            return None
        return self.runs[run].of(unit)

    @classmethod
    def load(cls, cur, model: str, source: str, n_units: int) -> RowIndex | None:
        runs = {}
        for run in RUNS:
            table, _, part = run.partition(" ")
            where = {"": "", "top": " AND band IS NULL", "bands": " AND band IS NOT NULL"}[part]
            t = cur.execute(
                f"SELECT unit, min(rowid), max(rowid), count(*) FROM {table} "
                f"WHERE model = ? AND source = ?{where} GROUP BY unit",
                [model, source],
            ).fetchnumpy()
            units, lo, hi, n = (np.asarray(t[k]) for k in t)
            if len(units) and ((hi - lo + 1 != n).any() or units.min() < 0 or units.max() >= n_units):
                return None  # not written in unit order: filter by unit instead
            base = int(lo.min()) if len(lo) else 0
            if len(lo) and int(hi.max()) - base >= 2**31:
                return None
            first = np.zeros(n_units, dtype=np.int32)
            count = np.zeros(n_units, dtype=np.int32)
            first[units] = lo - base
            count[units] = n
            runs[run] = Ranges(base, first, count)
        return cls(n_units, runs)
