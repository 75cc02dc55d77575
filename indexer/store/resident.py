"""An index's per-unit tables held in memory as flat numpy arrays, for fast unit pages.

A DuckDB query costs about a millisecond however small it is, and a unit page needs
four. The index never changes while it is served, so when it fits a memory budget the
store loads unit_stats, bands, logits, examples and sequences once (columnar, through
Arrow) and answers `unit()` by slicing arrays. Larger indexes fall back to SQL.

Layout: each table is sorted by (source, unit, ...); `rows[(source, unit)] = (lo, hi)`
gives a unit's row range. List columns are stored as (values, offsets) pairs.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import numpy as np


def _lists(column) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow list column -> (flat values, offsets) numpy arrays."""
    col = column.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    return values, offsets


def _row_ranges(sources: list[str], units: np.ndarray) -> dict[tuple[str, int], tuple[int, int]]:
    n = len(units)
    if n == 0:
        return {}
    src = np.asarray(sources, dtype=object)
    change = np.ones(n, dtype=bool)
    change[1:] = (src[1:] != src[:-1]) | (units[1:] != units[:-1])
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    return {(src[s], int(units[s])): (int(s), int(e)) for s, e in zip(starts, ends)}


class ResidentTables:
    """Every unit of one model, in memory. Build with `load`; read-only afterwards."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] = {}
        self.bands: dict[str, Any] = {}
        self.logits: dict[str, Any] = {}
        self.examples: dict[str, Any] = {}
        self.seq_values = np.zeros(0, dtype=np.int64)
        self.seq_offsets = np.zeros(1, dtype=np.int64)
        self.seq_row: dict[int, int] = {}
        # Every sequence's token ids as Python ints, one object per vocabulary entry (8
        # bytes a token), and where each sequence starts in it: an example's window is a
        # list slice, not a numpy gather and a conversion.
        self.seq_tokens: list[int] = []
        self.seq_start: dict[int, int] = {}

    @staticmethod
    def size_estimate(cur, model: str) -> int:
        """Approximate bytes needed: dominated by example activations and token ids."""
        n_acts = cur.execute("SELECT coalesce(sum(len(acts)), 0) FROM examples WHERE model = ?", [model]).fetchall()[0][
            0
        ]
        n_toks = cur.execute(
            "SELECT coalesce(sum(len(token_ids)), 0) FROM sequences WHERE model = ?", [model]
        ).fetchall()[0][0]
        n_rows = cur.execute("SELECT count(*) FROM examples WHERE model = ?", [model]).fetchall()[0][0]
        return int(n_acts) * 4 + int(n_toks) * 12 + int(n_rows) * 40

    @classmethod
    def load(cls, cur, model: str) -> ResidentTables:
        self = cls()
        p = {"m": model}

        t = cur.sql(
            "SELECT source, unit, max, min, mean, std, density, n_tokens, n_fired, cos_in_out, "
            "hist_edges, hist_counts FROM unit_stats WHERE model = $m ORDER BY source, unit",
            params=p,
        ).to_arrow_table()
        s = {
            name: t.column(name).to_numpy(zero_copy_only=False)
            for name in ("max", "min", "mean", "std", "density", "n_tokens", "n_fired", "cos_in_out")
        }
        s["edges"], s["edges_off"] = _lists(t.column("hist_edges"))
        s["counts"], s["counts_off"] = _lists(t.column("hist_counts"))
        s["rows"] = _row_ranges(t.column("source").to_pylist(), t.column("unit").to_numpy())
        self.stats = s

        t = cur.sql(
            "SELECT source, unit, band, q_lo, q_hi, lo, hi, count, share FROM bands "
            "WHERE model = $m ORDER BY source, unit, band",
            params=p,
        ).to_arrow_table()
        b = {
            name: t.column(name).to_numpy(zero_copy_only=False)
            for name in ("band", "q_lo", "q_hi", "lo", "hi", "count", "share")
        }
        b["rows"] = _row_ranges(t.column("source").to_pylist(), t.column("unit").to_numpy())
        self.bands = b

        t = cur.sql(
            "SELECT source, unit, top_ids, top_values, bottom_ids, bottom_values FROM logits "
            "WHERE model = $m ORDER BY source, unit",
            params=p,
        ).to_arrow_table()
        lg: dict[str, Any] = {
            name: _lists(t.column(name)) for name in ("top_ids", "top_values", "bottom_ids", "bottom_values")
        }
        lg["rows"] = _row_ranges(t.column("source").to_pylist(), t.column("unit").to_numpy())
        self.logits = lg

        t = cur.sql(
            "SELECT source, unit, coalesce(band, -1) AS band, seq, pos, act, start, acts "
            "FROM examples WHERE model = $m ORDER BY source, unit, band NULLS FIRST, rank",
            params=p,
        ).to_arrow_table()
        e = {name: t.column(name).to_numpy(zero_copy_only=False) for name in ("band", "seq", "pos", "act", "start")}
        e["acts"], e["acts_off"] = _lists(t.column("acts"))
        e["rows"] = _row_ranges(t.column("source").to_pylist(), t.column("unit").to_numpy())
        self.examples = e

        t = cur.sql("SELECT seq, token_ids FROM sequences WHERE model = $m ORDER BY seq", params=p).to_arrow_table()
        self.seq_values, self.seq_offsets = _lists(t.column("token_ids"))
        self.seq_row = {int(q): i for i, q in enumerate(t.column("seq").to_numpy())}
        tokens = self.seq_values.tolist()
        if tokens and min(tokens) >= 0:
            ints = list(range(max(tokens) + 1))
            tokens = list(map(ints.__getitem__, tokens))
        self.seq_tokens = tokens
        starts = self.seq_offsets.tolist()
        self.seq_start = {q: starts[row] for q, row in self.seq_row.items()}
        return self

    # -- reads -------------------------------------------------------------------------
    def has_unit(self, source: str, unit: int) -> bool:
        return (source, unit) in self.stats["rows"]

    def stats_row(self, source: str, unit: int) -> dict[str, Any] | None:
        s = self.stats
        rng = s["rows"].get((source, unit))
        if rng is None:
            return None
        i = rng[0]
        cos = s["cos_in_out"][i]
        return {
            "max": float(s["max"][i]),
            "min": float(s["min"][i]),
            "mean": float(s["mean"][i]),
            "std": float(s["std"][i]),
            "density": float(s["density"][i]),
            "n_tokens": int(s["n_tokens"][i]),
            "n_fired": int(s["n_fired"][i]),
            "cos_in_out": None if cos is None or np.isnan(cos) else float(cos),
            "hist_edges": s["edges"][s["edges_off"][i] : s["edges_off"][i + 1]].tolist(),
            "hist_counts": s["counts"][s["counts_off"][i] : s["counts_off"][i + 1]].tolist(),
        }

    def band_rows(self, source: str, unit: int) -> list[tuple]:
        b = self.bands
        lo, hi = b["rows"].get((source, unit), (0, 0))
        return [
            (
                int(b["band"][i]),
                float(b["q_lo"][i]),
                float(b["q_hi"][i]),
                float(b["lo"][i]),
                float(b["hi"][i]),
                int(b["count"][i]),
                float(b["share"][i]),
            )
            for i in range(lo, hi)
        ]

    def logit_row(self, source: str, unit: int) -> tuple[list, list, list, list] | None:
        lg = self.logits
        rng = lg["rows"].get((source, unit))
        if rng is None:
            return None
        i = rng[0]
        out = []
        for name in ("top_ids", "top_values", "bottom_ids", "bottom_values"):
            values, off = lg[name]
            out.append(values[off[i] : off[i + 1]].tolist())
        return tuple(out)

    def example_rows(self, source: str, unit: int, bands: Collection[int] | None = None) -> list[tuple]:
        """(band or None, seq, pos, act, start, acts, token_ids) in (band, rank) order: the
        top examples and those of `bands` (None: of every band)."""
        e = self.examples
        lo, hi = e["rows"].get((source, unit), (0, 0))
        if lo == hi:
            return []
        # Whole columns of the rows at once, then cut per row: numpy scalar reads per row
        # and field cost more than all of these together.
        rows: slice | np.ndarray = slice(lo, hi)
        off = e["acts_off"]
        if bands is None:
            first, last = int(off[lo]), int(off[hi])
            acts = e["acts"][first:last].tolist()
            cuts = (off[lo : hi + 1] - first).tolist()
        else:
            band = e["band"][lo:hi]
            kept = lo + np.flatnonzero((band < 0) | np.isin(band, list(bands)))
            if not len(kept):
                return []
            rows = kept
            starts, ends = off[kept], off[kept + 1]
            ends_in = np.cumsum(ends - starts)
            # The kept rows' activations, gathered in one take.
            take = np.repeat(starts - (ends_in - (ends - starts)), ends - starts) + np.arange(ends_in[-1])
            acts = e["acts"][take].tolist()
            cuts = [0, *ends_in.tolist()]
        seqs, starts_in_seq = e["seq"][rows].tolist(), e["start"][rows].tolist()
        # Each window's token ids: a slice of its sequence's Python ints (shared objects).
        tokens, seq_start = self.seq_tokens, self.seq_start
        ids = [
            tokens[seq_start[q] + a : seq_start[q] + a + (b - c)]
            for q, a, c, b in zip(seqs, starts_in_seq, cuts, cuts[1:])
        ]
        return [
            (None if band < 0 else band, seq, pos, act, start, acts[a:b], window)
            for band, seq, pos, act, start, a, b, window in zip(
                e["band"][rows].tolist(),
                seqs,
                e["pos"][rows].tolist(),
                e["act"][rows].tolist(),
                starts_in_seq,
                cuts,
                cuts[1:],
                ids,
            )
        ]

    def band_sizes(self, source: str, unit: int) -> dict[int, int]:
        """How many examples each band of a unit has stored (bands with none left out)."""
        e = self.examples
        lo, hi = e["rows"].get((source, unit), (0, 0))
        found, counts = np.unique(e["band"][lo:hi], return_counts=True)
        return {b: c for b, c in zip(found.tolist(), counts.tolist()) if b >= 0}

    def top_example_row(self, source: str, unit: int, rank: int) -> tuple | None:
        """(seq, pos, act, start, token_ids, acts) of a unit's top example of `rank`."""
        e = self.examples
        lo, hi = e["rows"].get((source, unit), (0, 0))
        i = lo + rank  # top examples come first, in rank order
        if rank < 0 or i >= hi or e["band"][i] >= 0:
            return None
        a = e["acts"][e["acts_off"][i] : e["acts_off"][i + 1]]
        seq, start = int(e["seq"][i]), int(e["start"][i])
        base = int(self.seq_offsets[self.seq_row[seq]]) + start
        ids = self.seq_values[base : base + len(a)]
        return (seq, int(e["pos"][i]), float(e["act"][i]), start, ids.tolist(), a.tolist())

    def sequence(self, seq: int) -> list[int] | None:
        row = self.seq_row.get(seq)
        if row is None:
            return None
        return self.seq_values[self.seq_offsets[row] : self.seq_offsets[row + 1]].tolist()
