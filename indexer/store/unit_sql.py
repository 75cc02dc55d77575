"""A unit's rows read with SQL, for the sources whose unit data is not in memory.

Each function takes `query(sql, params) -> rows` (the store's cursor of the calling
thread) and, where the source has one, its RowIndex: each table is then read by the
unit's rowid range, which DuckDB seeks to, instead of filtered by (source, unit). The
rows come out as SourceTables gives them, so a page is the same from either.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from actscope.indexer.store.resident import SequenceTable
from actscope.indexer.store.row_index import RowIndex

Query = Callable[..., list[tuple]]  # (sql, params) -> rows


def where_rows(rows_at: RowIndex | None, run: str, model: str, source: str, unit: int) -> tuple[str, list[Any]] | None:
    """The filter picking a unit's rows of `run` (a WHERE clause and its parameters):
    its rowid range, which holds its rows and no other (RowIndex.load checks that), so
    DuckDB reads no model, source or unit column; without a row index, those columns.
    None if it has no rows there."""
    if rows_at is None:
        return "model = ? AND source = ? AND unit = ?", [model, source, unit]
    rng = rows_at.of(run, unit)
    if rng is None:
        return None
    return "rowid BETWEEN ? AND ?", list(rng)


def _at_rowids(columns: str, rowids: list[int]) -> tuple[str, list[Any]]:
    """A query of `columns` of the example rows at `rowids`: a semi-join, which DuckDB
    turns into a filter on the scan (about three times quicker than a UNION ALL of
    one `rowid BETWEEN` scan per range, and a plain IN list is a full scan)."""
    return f"SELECT {columns} FROM examples WHERE rowid IN (SELECT unnest(?::BIGINT[]))", [rowids]


def stats(query: Query, model: str, source: str, unit: int, rows_at: RowIndex | None) -> dict[str, Any] | None:
    where = where_rows(rows_at, "unit_stats", model, source, unit)
    if where is None:
        return None
    rows = query(
        "SELECT max, min, mean, std, density, n_tokens, n_fired, cos_in_out, hist_edges, "
        f"hist_counts FROM unit_stats WHERE {where[0]}",
        where[1],
    )
    if not rows:
        return None
    r = rows[0]
    return {
        "max": float(r[0]),
        "min": float(r[1]),
        "mean": float(r[2]),
        "std": float(r[3]),
        "density": float(r[4]),
        "n_tokens": int(r[5]),
        "n_fired": int(r[6]),
        "cos_in_out": None if r[7] is None else float(r[7]),
        "hist_edges": [float(x) for x in r[8]],
        "hist_counts": [int(x) for x in r[9]],
    }


def example_rows(
    query: Query, model: str, source: str, unit: int, rows_at: RowIndex | None, sequences: SequenceTable | None
) -> list[tuple]:
    """(band, seq, pos, act, start, acts, token_ids) rows of a unit, by band (top
    first) and rank."""
    if rows_at is None:
        picked = (
            "SELECT band, rank, seq, pos, act, start, acts FROM examples WHERE model = ? AND source = ? AND unit = ?"
        )
        params: list[Any] = [model, source, unit]
    else:
        ranges = [r for r in (rows_at.of("examples top", unit), rows_at.of("examples bands", unit)) if r is not None]
        if not ranges:
            return []
        picked, params = _at_rowids(
            "band, rank, seq, pos, act, start, acts", [i for a, b in ranges for i in range(a, b + 1)]
        )
    if sequences is not None:  # the windows' tokens from memory: no join
        rows = query(f"SELECT band, seq, pos, act, start, acts FROM ({picked}) ORDER BY band NULLS FIRST, rank", params)
        return [
            (
                None if band is None else int(band),
                int(seq),
                int(pos),
                float(act),
                int(start),
                [float(a) for a in acts],
                sequences.window(int(seq), int(start), len(acts)),
            )
            for band, seq, pos, act, start, acts in rows
        ]
    return [
        (
            None if band is None else int(band),
            int(seq),
            int(pos),
            float(act),
            int(start),
            [float(a) for a in acts],
            list(ids),
        )
        for band, seq, pos, act, start, acts, ids in query(
            "SELECT e.band, e.seq, e.pos, e.act, e.start, e.acts, "
            "list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) "
            f"FROM ({picked}) e JOIN sequences s ON s.model = ? AND s.seq = e.seq "
            "ORDER BY e.band NULLS FIRST, e.rank",
            [*params, model],
        )
    ]


def unit_rows(
    query: Query, model: str, source: str, unit: int, rows_at: RowIndex | None, sequences: SequenceTable | None
):
    """(example rows, band rows, logit row) of a unit, as SourceTables gives them."""
    examples = example_rows(query, model, source, unit, rows_at, sequences)
    band_rows = []
    where = where_rows(rows_at, "bands", model, source, unit)
    if where is not None:
        band_rows = [
            (int(b), float(ql), float(qh), float(lo), float(hi), int(c), float(sh))
            for b, ql, qh, lo, hi, c, sh in query(
                f"SELECT band, q_lo, q_hi, lo, hi, count, share FROM bands WHERE {where[0]} ORDER BY band", where[1]
            )
        ]
    logit_row = None
    where = where_rows(rows_at, "logits", model, source, unit)
    if where is not None:
        rows = query(f"SELECT top_ids, top_values, bottom_ids, bottom_values FROM logits WHERE {where[0]}", where[1])
        if rows:
            t_ids, t_vals, b_ids, b_vals = rows[0]
            logit_row = (list(t_ids), [float(v) for v in t_vals], list(b_ids), [float(v) for v in b_vals])
    return examples, band_rows, logit_row


def top_examples(
    query: Query, model: str, wanted: list[tuple[str, int, int]], row_index: Callable, sequences: SequenceTable | None
) -> dict:
    """(seq, pos, act, start, token_ids, acts) or None by (source, unit, rank) of the top
    examples of `wanted` whose source has a row index (`row_index(source)`): each read
    at its rowid (the unit's first top row plus its rank), all in one query (the
    windows' tokens from `sequences` when in memory)."""
    at: dict[int, tuple[str, int, int]] = {}
    found: dict[tuple[str, int, int], tuple | None] = {}
    for source, unit, rank in wanted:
        rows_at = row_index(source)
        if rows_at is None:
            continue
        rng = rows_at.of("examples top", unit)
        if rng is None or not 0 <= rank <= rng[1] - rng[0]:
            found[(source, unit, rank)] = None
        else:
            at[rng[0] + rank] = (source, unit, rank)
    if not at:
        return found
    # Keyed by rowid: no source, unit or rank column to read.
    picked, params = _at_rowids("rowid AS at, seq, pos, act, start, acts", list(at))
    if sequences is not None:
        for rowid, seq, pos, act, start, acts in query(picked, params):
            ids = sequences.window(int(seq), int(start), len(acts))
            found[at[int(rowid)]] = (int(seq), int(pos), float(act), int(start), ids, list(acts))
        return found
    rows = query(
        "SELECT e.at, e.seq, e.pos, e.act, e.start, e.acts, "
        "list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) "
        f"FROM ({picked}) e JOIN sequences s ON s.model = ? AND s.seq = e.seq",
        [*params, model],
    )
    for rowid, seq, pos, act, start, acts, ids in rows:
        found[at[int(rowid)]] = (int(seq), int(pos), float(act), int(start), list(ids), list(acts))
    return found
