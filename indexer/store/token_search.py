"""Token search: the units whose top examples focus on a token's spellings (grouped by
token_variants.TokenVariants).

Scanning every unit's top examples per request costs seconds on 100,000 units, so
`FocusTable` reads them once per model (one SQL pass, lazily, on the first search) into
flat arrays, one row per unit and group of spellings (the vocabulary's groups, or each
token alone), each group's rows already in rank order: a search of one group's
spellings, which is every search the app makes, is a slice of it, ranked.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FocusHit:
    """A unit with top examples focused on the searched tokens."""

    source: str
    unit: int
    count: int  # its top examples whose focus token is one of them
    best_act: float  # the strongest of those examples' activation
    best_rank: int  # that example's rank among the unit's top examples (0: the strongest)
    best_token_id: int  # that example's focus token
    top_token_id: int | None  # the focus token of the unit's strongest top example


@dataclass(frozen=True)
class FocusResult:
    """Every unit matching a search, ranked by count, then best activation, then source
    and unit. Arrays are aligned: in rank order if `in_order` (a group's rows, ranked when
    the table was built), else in no order, and `page` ranks only as far as a page needs
    (a search may match thousands of units and show twenty)."""

    table: FocusTable
    codes: np.ndarray  # source code
    units: np.ndarray
    counts: np.ndarray
    best_acts: np.ndarray
    best_ranks: np.ndarray
    best_tokens: np.ndarray
    in_order: bool = False

    @property
    def total(self) -> int:
        return len(self.units)

    def units_per_token(self) -> dict[int, int]:
        """How many of the units have their strongest matching example on each token."""
        ids, n = np.unique(self.best_tokens, return_counts=True)
        return dict(zip(ids.tolist(), n.tolist()))

    def ranked(self, stop: int) -> np.ndarray:
        """Positions of the first `stop` units in rank order."""
        codes, units, counts, acts = self.codes, self.units, self.counts, self.best_acts
        n = len(units)
        if self.in_order:
            return np.arange(min(max(stop, 0), n))
        first = _first_key(counts, acts) if 0 < stop < n else None
        if first is None:  # every unit (or a key that does not fit one integer): sort all
            return np.lexsort((units, codes, -acts, -counts))[:stop]
        # The units ranked before the stop-th, and those tied with it, by count and
        # activation (one integer key); then only those sorted, ties by source and unit.
        kth = np.partition(first, stop - 1)[stop - 1]
        maybe = np.flatnonzero(first <= kth)
        return maybe[np.lexsort((units[maybe], codes[maybe], first[maybe]))][:stop]

    def page(self, start: int, stop: int) -> list[FocusHit]:
        t = self.table
        stop = min(stop, self.total)
        if start >= stop:
            return []
        at = self.ranked(stop)[start:stop]
        # Whole columns to Python at once: a numpy scalar read per hit and field costs more.
        codes, units = self.codes[at].tolist(), self.units[at].tolist()
        return [
            FocusHit(
                source=t.sources[code],
                unit=unit,
                count=count,
                best_act=act,
                best_rank=rank,
                best_token_id=token,
                top_token_id=top,
            )
            for code, unit, count, act, rank, token, top in zip(
                codes,
                units,
                self.counts[at].tolist(),
                self.best_acts[at].tolist(),
                self.best_ranks[at].tolist(),
                self.best_tokens[at].tolist(),
                t.top_tokens(codes, units),
            )
        ]


def _first_key(counts: np.ndarray, acts: np.ndarray) -> np.ndarray | None:
    """An int64 per unit that orders as (count descending, activation descending) and
    ties exactly where both do; None if the values do not allow one (NaN, huge counts)."""
    if not len(counts) or counts.min() < 0 or counts.max() >= 2**30 or np.isnan(acts).any():
        return None
    bits = (acts.astype(np.float32) + np.float32(0)).view(np.int32).astype(np.int64)  # -0.0 + 0 is 0.0
    ordered = np.where(bits < 0, -(bits & 0x7FFFFFFF), bits)  # the float's order, as integers
    return (int(counts.max()) - counts.astype(np.int64)) << 32 | (2**31 - 1 - ordered)


def _packed(columns: list[np.ndarray]) -> np.ndarray | None:
    """The columns (non-negative integers, most significant first) in one int64 that
    orders as they do together; None if they need more than 63 bits or one is negative."""
    key = np.zeros(len(columns[0]), dtype=np.int64)
    bits = 0
    for col in columns:
        if len(col) and col.min() < 0:
            return None
        width = int(col.max()).bit_length() if len(col) else 0
        bits += width
        if bits > 63:
            return None
        key = key << width | col.astype(np.int64)
    return key


def _per_unit(
    codes: np.ndarray, units: np.ndarray, ranks: np.ndarray, groups: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(order, starts) of rows of one example focus each: the rows by group, source, unit
    and rank (a unit's strongest example first), and where each group's unit starts in
    that order. Needs at least one row."""
    # (group, source, unit, rank) in one integer, unique (a rank's example has one focus token).
    key = _packed([codes, units, ranks] if groups is None else [groups, codes, units, ranks])
    if key is not None:
        order = np.argsort(key)
    else:
        order = np.lexsort((ranks, units, codes) if groups is None else (ranks, units, codes, groups))
    c, u = codes[order], units[order]
    change = (c[1:] != c[:-1]) | (u[1:] != u[:-1])
    if groups is not None:
        g = groups[order]
        change |= g[1:] != g[:-1]
    return order, np.flatnonzero(np.r_[True, change])


class FocusTable:
    """Per group of focus tokens (the vocabulary's spellings of one text, or each token
    alone), source and unit: the number of the unit's top examples focused on the group's
    tokens, and the best activation, rank and focus token among them. Rows sorted by
    group, each group's rows in rank order (count, activation, then source and unit)."""

    def __init__(
        self,
        sources: list[str],
        tokens: np.ndarray,
        codes: np.ndarray,
        units: np.ndarray,
        counts: np.ndarray,
        best_acts: np.ndarray,
        best_ranks: np.ndarray,
        group_of: np.ndarray | None = None,
        partial: Callable[[list[int], str | None], FocusResult] | None = None,
    ) -> None:
        """From one row per (focus token, source, unit). `group_of`: each token id's
        group number (`TokenVariants.group_of`); a token it lacks is a group alone.
        `partial` answers a search of some but not all of a group's tokens, which rows
        merged per group cannot (without it, such a search raises ValueError)."""
        self.sources = sources
        self._partial = partial
        known = np.zeros(0, dtype=np.int32) if group_of is None else np.asarray(group_of, dtype=np.int32)
        outside = (tokens < 0) | (tokens >= len(known))
        extra = np.unique(tokens[outside]).astype(np.int64)
        n_groups = (int(known.max()) + 1 if len(known) else 0) + len(extra)
        keys = np.concatenate([np.arange(len(known), dtype=np.int64), extra])
        key_group = np.concatenate([known, np.arange(n_groups - len(extra), n_groups, dtype=np.int32)])
        order = np.argsort(keys, kind="stable")
        self._keys, self._key_group = keys[order], key_group[order]  # token id -> group, by searchsorted
        self._group_size = np.bincount(self._key_group, minlength=n_groups).astype(np.int32)
        if outside.any():
            groups = self._key_group[np.searchsorted(self._keys, tokens)]
        else:
            groups = known[tokens]
        if len(tokens):  # one row per (group, source, unit): counts summed, its strongest example kept
            order, starts = _per_unit(codes, units, best_ranks, groups)
            counts = np.add.reduceat(counts[order], starts, dtype=counts.dtype)  # at most a unit's top-k
            pick = order[starts]
            groups, tokens, codes, units = groups[pick], tokens[pick], codes[pick], units[pick]
            best_acts, best_ranks = best_acts[pick], best_ranks[pick]
        # Each group's rows in rank order; stable, so ties keep (source, unit) order.
        first = _first_key(counts, best_acts)
        key = None if first is None else _packed([groups, first])
        if key is not None:
            order = np.argsort(key, kind="stable")
        elif first is not None:
            order = np.lexsort((first, groups))
        else:
            order = np.lexsort((units, codes, -best_acts, -counts, groups))
        self.tokens = tokens[order]  # the focus token of the row's best example
        self.codes, self.units = codes[order], units[order]
        self.counts, self.best_acts, self.best_ranks = counts[order], best_acts[order], best_ranks[order]
        self._starts = np.searchsorted(groups[order], np.arange(n_groups + 1))  # group g: rows _starts[g] ..
        # A unit's top token: the focus of its rank-0 example, i.e. the row with best rank 0.
        self._top: list[np.ndarray] = []
        zero = np.flatnonzero(self.best_ranks == 0)
        zero_codes, zero_units, zero_tokens = self.codes[zero], self.units[zero], self.tokens[zero]
        for code in range(len(sources)):
            mask = zero_codes == code
            top = np.full(int(zero_units[mask].max(initial=-1)) + 1, -1, dtype=np.int32)
            top[zero_units[mask]] = zero_tokens[mask]
            self._top.append(top)

    @property
    def nbytes(self) -> int:
        arrays = (
            self.tokens,
            self.codes,
            self.units,
            self.counts,
            self.best_acts,
            self.best_ranks,
            self._keys,
            self._key_group,
            self._group_size,
            self._starts,
            *self._top,
        )
        return sum(a.nbytes for a in arrays)

    @staticmethod
    def size_estimate(cur, model: str) -> int:
        """At most the bytes `load` holds: 24 a top example (at most one row each), 4 a
        unit, 28 a token of the vocabulary (its group, and where the group's rows are)."""
        n_top, n_units, n_vocab = cur.execute(
            "SELECT (SELECT count(*) FROM examples WHERE model = $m AND band IS NULL), "
            "(SELECT coalesce(sum(n_units), 0) FROM sources WHERE model = $m), "
            "(SELECT coalesce(max(token_id) + 1, 0) FROM vocab WHERE model = $m)",
            {"m": model},
        ).fetchall()[0]
        return int(n_top) * 24 + int(n_units) * 4 + int(n_vocab) * 28

    @classmethod
    def load(cls, cur, model: str, group_of=None, partial=None) -> FocusTable:
        """One pass over the model's top examples (band NULL); `group_of` and `partial`
        as in the constructor."""
        t = cur.sql(
            "SELECT e.source, e.unit, s.token_ids[e.pos + 1] AS tok, count(*) AS n, "
            "max(e.act) AS best, min(e.rank) AS best_rank "
            "FROM examples e JOIN sequences s ON s.model = e.model AND s.seq = e.seq "
            "WHERE e.model = $m AND e.band IS NULL GROUP BY e.source, e.unit, tok",
            params={"m": model},
        ).to_arrow_table()
        return cls.from_arrow(t, group_of, partial)

    @classmethod
    def from_arrow(cls, t, group_of=None, partial=None) -> FocusTable:
        """From (source, unit, tok, n, best, best_rank) rows."""
        source_col = t.column("source").combine_chunks().dictionary_encode()
        names = [str(s) for s in source_col.dictionary.to_pylist()]
        sources = sorted(names)  # codes in source order: ties rank by source, then unit
        recode = np.array([sources.index(n) for n in names], dtype=np.int32)
        return cls(
            sources,
            # 4-byte columns: 2,048,000 top examples of 102,400 units take ~40 MB.
            t.column("tok").to_numpy().astype(np.int32),
            recode[source_col.indices.to_numpy(zero_copy_only=False)] if names else np.zeros(0, dtype=np.int32),
            t.column("unit").to_numpy().astype(np.int32),
            t.column("n").to_numpy().astype(np.int32),
            t.column("best").to_numpy().astype(np.float32),  # stored as REAL: exact
            t.column("best_rank").to_numpy().astype(np.int32),
            group_of,
            partial,
        )

    def top_token(self, code: int, unit: int) -> int | None:
        top = self._top[code]
        return int(top[unit]) if 0 <= unit < len(top) and top[unit] >= 0 else None

    def top_tokens(self, codes: list[int], units: list[int]) -> list[int | None]:
        return [self.top_token(c, u) for c, u in zip(codes, units)]

    def search(self, token_ids: list[int], source: str | None = None) -> FocusResult:
        """The units whose top examples focus on any of `token_ids` (of `source` only,
        if given), their counts summed over those tokens, ranked."""
        ids = np.unique(np.asarray(token_ids, dtype=np.int64))
        at = np.minimum(np.searchsorted(self._keys, ids), max(len(self._keys) - 1, 0))
        known = self._keys[at] == ids if len(self._keys) else np.zeros(len(ids), dtype=bool)
        groups = np.unique(self._key_group[at[known]])
        if int(self._group_size[groups].sum()) != int(known.sum()):
            if self._partial is None:
                raise ValueError("this focus table answers searches of whole groups of spellings only")
            return self._partial(token_ids, source)
        code = None
        if source is not None:
            if source in self.sources:
                code = self.sources.index(source)
            else:
                groups = groups[:0]
        if len(groups) == 1:  # one group: its rows, ranked already
            g = int(groups[0])
            lo, hi = int(self._starts[g]), int(self._starts[g + 1])
            part: slice | np.ndarray = slice(lo, hi)
            if code is not None:
                part = lo + np.flatnonzero(self.codes[lo:hi] == code)
            return FocusResult(
                self,
                self.codes[part],
                self.units[part],
                self.counts[part],
                self.best_acts[part],
                self.best_ranks[part],
                self.tokens[part],
                in_order=True,
            )
        rows = np.concatenate(
            [np.arange(self._starts[g], self._starts[g + 1]) for g in groups.tolist()] or [np.zeros(0, dtype=np.intp)]
        )
        if code is not None:
            rows = rows[self.codes[rows] == code]
        codes, units = self.codes[rows], self.units[rows]
        acts, ranks, tokens, counts = self.best_acts[rows], self.best_ranks[rows], self.tokens[rows], self.counts[rows]
        if len(rows):  # one unit may match several groups: sum its counts, keep its best example
            order, starts = _per_unit(codes, units, ranks)
            counts = np.add.reduceat(counts[order], starts)
            pick = order[starts]
            codes, units, acts, ranks, tokens = codes[pick], units[pick], acts[pick], ranks[pick], tokens[pick]
        return FocusResult(self, codes, units, counts, acts, ranks, tokens)


class SqlFocus:
    """Token search of a model whose FocusTable does not fit the store's memory budget:
    each search reads the rows of the units it finds (every focus token of their top
    examples, so their top token is known too) and ranks them as FocusTable does."""

    def __init__(self, cursor: Callable, model: str) -> None:
        self._cursor = cursor  # a new cursor for each search (the caller's thread's)
        self.model = model

    def search(self, token_ids: list[int], source: str | None = None) -> FocusResult:
        cur = self._cursor()
        try:
            t = cur.sql(
                "WITH top AS ("
                "  SELECT e.source, e.unit, e.rank, e.act, s.token_ids[e.pos + 1] AS tok "
                "  FROM examples e JOIN sequences s ON s.model = e.model AND s.seq = e.seq "
                "  WHERE e.model = $m AND e.band IS NULL AND ($s IS NULL OR e.source = $s)), "
                "hit AS (SELECT DISTINCT source, unit FROM top WHERE list_contains($ids, tok)) "
                "SELECT t.source, t.unit, t.tok, count(*) AS n, max(t.act) AS best, min(t.rank) AS best_rank "
                "FROM top t SEMI JOIN hit h ON h.source = t.source AND h.unit = t.unit "
                "GROUP BY t.source, t.unit, t.tok",
                params={"m": self.model, "s": source, "ids": [int(i) for i in token_ids]},
            ).to_arrow_table()
        finally:
            cur.close()
        return FocusTable.from_arrow(t).search(token_ids, source)
