"""Fingerprints as the app reads them: the reservoir's positions, and each source's units'
values there, standardised once so that Pearson r with every unit of a source is one
matrix-vector product.

r(x, y) = sum_j (x_j - mean x)(y_j - mean y) / (n std x std y) (population std). With the
query standardised, z = (y - mean y) / (std y sqrt n) (so sum_j z_j = 0), r with unit x is
sum_j x_j z_j / (std x sqrt n): the mean of x drops out. Dense sources hold each row
already as (x - mean x) / (std x sqrt n); sparse ones hold their nonzero values with a
factor per unit, so r is a sum over their nonzero entries only.

r is given for a unit only where it is active (value > 0) on at least MIN_ACTIVE of the
reservoir's positions and not constant there; elsewhere the unit is `eligible` False.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from actscope.indexer.store.resident import list_arrays

MIN_ACTIVE = 8  # positions a unit must be active on for its correlations to mean anything


@dataclass(frozen=True)
class Reservoir:
    """The positions every fingerprint of a model's index has a value at: slot i is
    (seq[i], pos[i]), where the corpus has token token_id[i]."""

    n: int
    capacity: int
    seed: int
    seq: np.ndarray
    pos: np.ndarray
    token_id: np.ndarray

    def positions(self) -> list[dict[str, int]]:
        return [
            {"slot": i, "seq": int(s), "pos": int(p), "token_id": int(t)}
            for i, (s, p, t) in enumerate(zip(self.seq, self.pos, self.token_id))
        ]


@dataclass
class SourcePrints:
    """One source's fingerprints, standardised (see the module's docstring).

    dense: [U, n] float32 rows (x - mean) / (std sqrt n), zero for a unit that is not
    eligible; else the nonzero values of unit u are values[start[u]:start[u+1]] at
    slots[...], and `factor` [U] is 1 / (std sqrt n) (0 where not eligible)."""

    slug: str
    n: int
    n_active: np.ndarray  # [U] int: positions with value > 0
    constant: np.ndarray  # [U] bool: the same value at every position
    dense: np.ndarray | None = None
    start: np.ndarray | None = None
    slots: np.ndarray | None = None
    values: np.ndarray | None = None
    factor: np.ndarray | None = None
    _rows: np.ndarray | None = None  # unit of each nonzero value (sparse)

    @property
    def n_units(self) -> int:
        return int(self.n_active.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of its arrays (a sparse source's unit of each value included, built now)."""
        rows = self._value_units() if self.dense is None and self.start is not None else None
        parts = (self.n_active, self.constant, self.dense, self.start, self.slots, self.values, self.factor, rows)
        return sum(a.nbytes for a in parts if a is not None)

    def _value_units(self) -> np.ndarray:
        """The unit of each nonzero value of a sparse source, built on first use."""
        if self._rows is None:
            assert self.start is not None
            self._rows = np.repeat(np.arange(self.n_units), np.diff(self.start))
        return self._rows

    @property
    def eligible(self) -> np.ndarray:
        return (self.n_active >= MIN_ACTIVE) & ~self.constant

    def raw(self, unit: int) -> np.ndarray:
        """[n] float64: the unit's stored values (for a dense source: up to the standardisation)."""
        if self.dense is not None:
            return self.dense[unit].astype(np.float64)
        assert self.start is not None and self.slots is not None and self.values is not None
        row = np.zeros(self.n)
        a, b = self.start[unit], self.start[unit + 1]
        row[self.slots[a:b]] = self.values[a:b]
        return row

    def standardised(self, unit: int) -> np.ndarray:
        """[n] float32 z of the unit: centred, unit norm (zeros if it is not eligible)."""
        if not self.eligible[unit]:
            return np.zeros(self.n, dtype=np.float32)
        if self.dense is not None:
            return self.dense[unit]
        return standardise(self.raw(unit))

    def correlate(self, z: np.ndarray) -> np.ndarray:
        """[U] float32 r of every unit with the standardised vector z (meaningful where eligible)."""
        if self.dense is not None:
            return self.dense @ z
        assert self.slots is not None and self.values is not None and self.factor is not None
        sums = np.bincount(self._value_units(), weights=self.values * z[self.slots], minlength=self.n_units)
        return (sums * self.factor).astype(np.float32)


def standardise(x: np.ndarray) -> np.ndarray:
    """(x - mean) / (std sqrt n) as float32: the vector whose dot products are r."""
    centred = x - x.mean()
    norm = np.sqrt((centred * centred).sum())
    return (centred / norm).astype(np.float32) if norm > 0 else np.zeros(x.shape, dtype=np.float32)


def read_reservoir(cur, model: str, meta: dict[str, Any]) -> Reservoir | None:
    """The model's reservoir, or None for an index built without fingerprints."""
    rows = cur.execute("SELECT seq, pos, token_id FROM reservoir WHERE model = ? ORDER BY slot", [model]).fetchnumpy()
    described = meta.get("reservoir")
    if not isinstance(described, dict) or len(rows["seq"]) == 0:
        return None
    return Reservoir(
        n=len(rows["seq"]),
        capacity=int(described.get("capacity", len(rows["seq"]))),
        seed=int(described.get("seed", 0)),
        seq=rows["seq"].astype(np.int64),
        pos=rows["pos"].astype(np.int64),
        token_id=rows["token_id"].astype(np.int64),
    )


def read_source(cur, model: str, source: str, n: int) -> SourcePrints | None:
    """A source's fingerprints over a reservoir of n positions, standardised; None if the
    index has none for it."""
    rows = cur.execute(
        "SELECT slots, acts FROM fingerprints WHERE model = ? AND source = ? ORDER BY unit", [model, source]
    ).fetchall()
    if not rows:
        return None
    if all(slots is None for slots, _ in rows):
        x = np.frombuffer(b"".join(acts for _, acts in rows), dtype="<f2").reshape(len(rows), n)
        return _dense(source, x.astype(np.float32))
    return _sparse(source, rows, n)


def _dense(slug: str, x: np.ndarray) -> SourcePrints:
    """x: [U, n] float32 (the stored float16 values, exactly). In float32 with float64
    sums: a float64 copy of a source's rows made its first correlation take seconds."""
    n = x.shape[1]
    n_active = np.count_nonzero(x > 0, axis=1)
    constant = x.max(1) == x.min(1)
    centred = x - x.mean(1, dtype=np.float64).astype(np.float32)[:, None]
    norms = np.sqrt(np.einsum("ij,ij->i", centred, centred, dtype=np.float64))
    ok = (n_active >= MIN_ACTIVE) & ~constant & (norms > 0)
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=ok)
    centred *= scale.astype(np.float32)[:, None]
    return SourcePrints(slug, n, n_active, constant, dense=centred)


def _sparse(slug: str, rows: list[tuple[Any, Any]], n: int) -> SourcePrints:
    counts = np.zeros(len(rows), dtype=np.int64)
    slot_parts, value_parts = [], []
    for i, (slots, acts) in enumerate(rows):
        values = np.frombuffer(acts, dtype="<f2")
        where = np.arange(n, dtype=np.uint16) if slots is None else np.frombuffer(slots, dtype="<u2")
        counts[i] = values.size
        slot_parts.append(where)
        value_parts.append(values)
    start = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    slots = np.concatenate(slot_parts).astype(np.int64)
    values = np.concatenate(value_parts).astype(np.float64)
    units = np.repeat(np.arange(len(rows)), counts)
    sums = np.bincount(units, weights=values, minlength=len(rows))
    squares = np.bincount(units, weights=values * values, minlength=len(rows))
    mean = sums / n
    variance = np.maximum(squares / n - mean * mean, 0.0)
    n_active = np.bincount(units, weights=values > 0, minlength=len(rows)).astype(np.int64)
    # Constant: no nonzero value at all, or a value at every slot that never changes.
    highest = np.full(len(rows), -np.inf)
    lowest = np.full(len(rows), np.inf)
    np.maximum.at(highest, units, values)
    np.minimum.at(lowest, units, values)
    highest = np.where(counts < n, np.maximum(highest, 0.0), highest)
    lowest = np.where(counts < n, np.minimum(lowest, 0.0), lowest)
    constant = (counts == 0) | (highest == lowest)
    norms = np.sqrt(variance * n)
    ok = (n_active >= MIN_ACTIVE) & ~constant & (norms > 0)
    factor = np.divide(1.0, norms, out=np.zeros_like(norms), where=ok)
    return SourcePrints(
        slug, n, n_active, constant, start=start, slots=slots, values=values, factor=factor, _rows=units
    )


def read_decoders(cur, model: str, source: str) -> np.ndarray | None:
    """[U, d_model] float32 unit-norm decoder directions of a source, or None."""
    # Through Arrow: a list of Python floats per unit took seconds for 65,536 features.
    table = cur.sql(
        "SELECT direction FROM decoders WHERE model = $m AND source = $s ORDER BY unit",
        params={"m": model, "s": source},
    ).to_arrow_table()
    if not table.num_rows:
        return None
    values, offsets = list_arrays(table.column("direction"))
    widths = np.diff(offsets)
    if widths.min() != widths.max():
        raise ValueError(f"decoders of {source}: directions of different lengths")
    vectors = values.astype(np.float32).reshape(table.num_rows, int(widths[0]))
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
