"""A source's per-unit tables held in memory as flat numpy arrays, for fast unit pages.

A DuckDB query costs about a millisecond however small it is, and a unit page needs
four. The index never changes while it is served, so the store loads a source's
unit_stats, bands, logits and examples once (columnar, through Arrow), and a model's
sequences, when they fit its memory budget (store/budget.py), and answers `unit()` by
slicing arrays. What does not fit is read with SQL.

Layout: each table is sorted by (unit, ...); `offsets[u] .. offsets[u + 1]` are unit u's
rows (one int64 array per table: 8 bytes a unit, where a dict of row ranges cost about
200). List columns are stored as (values, offsets) pairs.
"""

from __future__ import annotations

import sys
from collections.abc import Collection
from typing import Any

import numpy as np

# Bytes a row of each table takes in memory besides its lists: the numpy columns `load`
# keeps (4 or 8 bytes each) and each list column's offset; a list value takes its
# element size (4 bytes: REAL, INTEGER; 8: DOUBLE, BIGINT).
_STATS_ROW = 4 + 4 + 8 + 8 + 8 + 8 + 8 + 8 + 2 * 4
_BANDS_ROW = 4 + 6 * 8
_LOGITS_ROW = 4 * 4
_EXAMPLES_ROW = 5 * 4 + 4


def list_arrays(column) -> tuple[np.ndarray, np.ndarray]:
    """A pyarrow list column -> (flat values, offsets) numpy arrays, integers narrowed."""
    col = column.combine_chunks()
    offsets = col.offsets.to_numpy()
    values = col.values.to_numpy(zero_copy_only=False)
    return narrow(values), offsets


def _columns(t, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Columns of an Arrow table as numpy arrays, integers narrowed."""
    return {name: narrow(t.column(name).to_numpy(zero_copy_only=False)) for name in names}


def _offsets(units: np.ndarray, n_units: int) -> np.ndarray:
    """[n_units + 1]: unit u's rows are offsets[u] .. offsets[u + 1] of rows sorted by unit."""
    return narrow(np.searchsorted(units, np.arange(n_units + 1), side="left"))


def narrow(values: np.ndarray) -> np.ndarray:
    """`values` in the smallest integer type that holds every one of them (the readers
    turn each into a Python int, so the type changes no result); other arrays as they are."""
    if values.dtype.kind not in "iu" or values.dtype.itemsize == 1 or not len(values):
        return values
    lo, hi = int(values.min()), int(values.max())
    for dtype in (np.int8, np.int16, np.int32):
        if np.iinfo(dtype).min <= lo and hi <= np.iinfo(dtype).max:
            return values.astype(dtype)
    return values


def _nbytes(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return 0


class SequenceTable:
    """A model's sequences (token ids), in memory."""

    def __init__(self) -> None:
        self.seq_values = np.zeros(0, dtype=np.int64)
        self.seq_offsets = np.zeros(1, dtype=np.int64)
        self.seq_row: dict[int, int] = {}
        # Every sequence's token ids as Python ints, one object per vocabulary entry (8
        # bytes a token), and where each sequence starts in it: an example's window is a
        # list slice, not a numpy gather and a conversion.
        self.seq_tokens: list[int] = []
        self.seq_start: dict[int, int] = {}
        self.nbytes = 0

    @staticmethod
    def size_estimate(cur, model: str) -> int:
        """Bytes `load` will hold: token ids as numpy and as a list, and two dicts by sequence."""
        n_toks, n_seqs, top = cur.execute(
            "SELECT coalesce(sum(len(token_ids)), 0), count(*), coalesce(max(list_max(token_ids)), 0) "
            "FROM sequences WHERE model = ?",
            [model],
        ).fetchall()[0]
        return int(n_toks) * 12 + int(n_seqs) * 240 + (int(top) + 1) * 36

    @classmethod
    def load(cls, cur, model: str) -> SequenceTable:
        self = cls()
        t = cur.sql("SELECT seq, token_ids FROM sequences WHERE model = $m ORDER BY seq", params={"m": model})
        t = t.to_arrow_table()
        self.seq_values, self.seq_offsets = list_arrays(t.column("token_ids"))
        self.seq_row = {int(q): i for i, q in enumerate(t.column("seq").to_numpy())}
        tokens = self.seq_values.tolist()
        n_ints = 0
        if tokens and min(tokens) >= 0:
            ints = list(range(max(tokens) + 1))
            n_ints = len(ints)
            tokens = list(map(ints.__getitem__, tokens))
        self.seq_tokens = tokens
        starts = self.seq_offsets.tolist()
        self.seq_start = {q: starts[row] for q, row in self.seq_row.items()}
        self.nbytes = (
            self.seq_values.nbytes
            + self.seq_offsets.nbytes
            + sys.getsizeof(self.seq_tokens)
            + n_ints * 36
            + sys.getsizeof(self.seq_row)
            + sys.getsizeof(self.seq_start)
            + len(self.seq_row) * 2 * 28
        )
        return self

    def sequence(self, seq: int) -> list[int] | None:
        row = self.seq_row.get(seq)
        if row is None:
            return None
        return self.seq_values[self.seq_offsets[row] : self.seq_offsets[row + 1]].tolist()

    def window(self, seq: int, start: int, n: int) -> list[int]:
        """The token ids of sequence `seq` at positions start .. start + n - 1."""
        base = int(self.seq_offsets[self.seq_row[seq]]) + start
        return self.seq_values[base : base + n].tolist()


class SourceTables:
    """Every unit of one source, in memory. Build with `load`; read-only afterwards."""

    def __init__(self, n_units: int, sequences: SequenceTable) -> None:
        self.n_units = n_units
        self.sequences = sequences
        self.stats: dict[str, Any] = {}
        self.bands: dict[str, Any] = {}
        self.logits: dict[str, Any] = {}
        self.examples: dict[str, Any] = {}
        self.nbytes = 0

    @staticmethod
    def size_estimate(cur, model: str, source: str, n_units: int) -> int:
        """Bytes `load` will hold for the source, from its row and list-value counts."""
        p = [model, source]
        n_stats, n_hist = cur.execute(
            "SELECT count(*), coalesce(sum(len(hist_edges) + len(hist_counts)), 0) FROM unit_stats "
            "WHERE model = ? AND source = ?",
            p,
        ).fetchall()[0]
        (n_bands,) = cur.execute("SELECT count(*) FROM bands WHERE model = ? AND source = ?", p).fetchall()[0]
        n_logits, n_logit_values = cur.execute(
            "SELECT count(*), coalesce(sum(len(top_ids) + len(bottom_ids)), 0) FROM logits "
            "WHERE model = ? AND source = ?",
            p,
        ).fetchall()[0]
        n_examples, n_acts = cur.execute(
            "SELECT count(*), coalesce(sum(len(acts)), 0) FROM examples WHERE model = ? AND source = ?", p
        ).fetchall()[0]
        return (
            int(n_stats) * _STATS_ROW
            + int(n_hist) * 8
            + int(n_bands) * _BANDS_ROW
            + int(n_logits) * _LOGITS_ROW
            + int(n_logit_values) * 8
            + int(n_examples) * _EXAMPLES_ROW
            + int(n_acts) * 4
            + 4 * 8 * (n_units + 1)
            + 4 * 8  # the lists' final offsets
        )

    @classmethod
    def load(cls, cur, model: str, source: str, n_units: int, sequences: SequenceTable) -> SourceTables:
        self = cls(n_units, sequences)
        p = {"m": model, "s": source}

        t = cur.sql(
            "SELECT unit, max, min, mean, std, density, n_tokens, n_fired, cos_in_out, "
            "hist_edges, hist_counts FROM unit_stats WHERE model = $m AND source = $s ORDER BY unit",
            params=p,
        ).to_arrow_table()
        s = _columns(t, ("max", "min", "mean", "std", "density", "n_tokens", "n_fired", "cos_in_out"))
        s["edges"], s["edges_off"] = list_arrays(t.column("hist_edges"))
        s["counts"], s["counts_off"] = list_arrays(t.column("hist_counts"))
        s["rows"] = _offsets(t.column("unit").to_numpy(), n_units)
        self.stats = s

        t = cur.sql(
            "SELECT unit, band, q_lo, q_hi, lo, hi, count, share FROM bands "
            "WHERE model = $m AND source = $s ORDER BY unit, band",
            params=p,
        ).to_arrow_table()
        b = _columns(t, ("band", "q_lo", "q_hi", "lo", "hi", "count", "share"))
        b["rows"] = _offsets(t.column("unit").to_numpy(), n_units)
        self.bands = b

        t = cur.sql(
            "SELECT unit, top_ids, top_values, bottom_ids, bottom_values FROM logits "
            "WHERE model = $m AND source = $s ORDER BY unit",
            params=p,
        ).to_arrow_table()
        lg: dict[str, Any] = {
            name: list_arrays(t.column(name)) for name in ("top_ids", "top_values", "bottom_ids", "bottom_values")
        }
        lg["rows"] = _offsets(t.column("unit").to_numpy(), n_units)
        self.logits = lg

        t = cur.sql(
            "SELECT unit, coalesce(band, -1) AS band, seq, pos, act, start, acts "
            "FROM examples WHERE model = $m AND source = $s ORDER BY unit, band NULLS FIRST, rank",
            params=p,
        ).to_arrow_table()
        e = _columns(t, ("band", "seq", "pos", "act", "start"))
        e["acts"], e["acts_off"] = list_arrays(t.column("acts"))
        e["rows"] = _offsets(t.column("unit").to_numpy(), n_units)
        self.examples = e
        self.nbytes = sum(_nbytes(v) for part in (s, b, lg, e) for v in part.values())
        return self

    def _rows(self, table: dict[str, Any], unit: int) -> tuple[int, int]:
        if not 0 <= unit < self.n_units:
            return 0, 0
        off = table["rows"]
        return int(off[unit]), int(off[unit + 1])

    # -- reads -------------------------------------------------------------------------
    def stats_row(self, unit: int) -> dict[str, Any] | None:
        s = self.stats
        i, end = self._rows(s, unit)
        if i == end:
            return None
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

    def band_rows(self, unit: int) -> list[tuple]:
        b = self.bands
        lo, hi = self._rows(b, unit)
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

    def logit_row(self, unit: int) -> tuple[list, list, list, list] | None:
        lg = self.logits
        i, end = self._rows(lg, unit)
        if i == end:
            return None
        out = []
        for name in ("top_ids", "top_values", "bottom_ids", "bottom_values"):
            values, off = lg[name]
            out.append(values[off[i] : off[i + 1]].tolist())
        return tuple(out)

    def example_rows(self, unit: int, bands: Collection[int] | None = None) -> list[tuple]:
        """(band or None, seq, pos, act, start, acts, token_ids) in (band, rank) order: the
        top examples and those of `bands` (None: of every band)."""
        e = self.examples
        lo, hi = self._rows(e, unit)
        if lo == hi:
            return []
        if bands is None:
            return self._run_rows(lo, hi)
        # A unit's rows are in (band, rank) order, its top examples (band -1) first: the
        # top examples and each band asked for are runs of rows.
        band = e["band"][lo:hi]
        wanted = sorted({-1, *bands})
        firsts = np.searchsorted(band, wanted, "left").tolist()
        stops = np.searchsorted(band, wanted, "right").tolist()
        out: list[tuple] = []
        for a, b in zip(firsts, stops):
            if a < b:
                out += self._run_rows(lo + a, lo + b)
        return out

    def _run_rows(self, lo: int, hi: int) -> list[tuple]:
        """example_rows() of the rows lo .. hi - 1: whole columns of the rows at once, then
        cut per row (numpy scalar reads per row and field cost more than all of these)."""
        e = self.examples
        rows = slice(lo, hi)
        off = e["acts_off"]
        first = int(off[lo])
        acts = e["acts"][first : int(off[hi])].tolist()
        cuts = (off[lo : hi + 1] - first).tolist()
        seqs, starts_in_seq = e["seq"][rows].tolist(), e["start"][rows].tolist()
        # Each window's token ids: a slice of its sequence's Python ints (shared objects).
        tokens, seq_start = self.sequences.seq_tokens, self.sequences.seq_start
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

    def band_sizes(self, unit: int) -> dict[int, int]:
        """How many examples each band of a unit has stored (bands with none left out)."""
        e = self.examples
        lo, hi = self._rows(e, unit)
        band = e["band"][lo:hi]
        counts = np.bincount(band[band >= 0]).tolist()
        return {b: c for b, c in enumerate(counts) if c}

    def top_example_row(self, unit: int, rank: int) -> tuple | None:
        """(seq, pos, act, start, token_ids, acts) of a unit's top example of `rank`."""
        e = self.examples
        lo, hi = self._rows(e, unit)
        i = lo + rank  # top examples come first, in rank order
        if rank < 0 or i >= hi or e["band"][i] >= 0:
            return None
        off = e["acts_off"]
        a, b = int(off[i]), int(off[i + 1])
        seq, start = int(e["seq"][i]), int(e["start"][i])
        at = self.sequences.seq_start[seq] + start  # the window: a slice of the sequence's Python ints
        ids = self.sequences.seq_tokens[at : at + b - a]
        return (seq, int(e["pos"][i]), float(e["act"][i]), start, ids, e["acts"][a:b].tolist())
