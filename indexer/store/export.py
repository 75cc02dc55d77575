"""Bulk export of a source: every unit's row, streamed as Parquet or JSON lines.

A source is read in chunks of units, one query each (rows are stored in unit order, so
a chunk's query reads only its units' row groups); each chunk becomes a Parquet row
group or a run of JSON lines and is handed out as bytes at once. The first bytes leave
after one chunk's query, and memory holds one chunk whatever the source's size.
"""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from actscope.indexer.errors import ActscopeError

FORMATS = ("parquet", "jsonl")

QUERY = (
    "WITH ex AS ("
    "  SELECT unit, list({'band': band, 'rank': rank, 'seq': seq, 'pos': pos, 'act': act, "
    "    'start': start, 'acts': acts} ORDER BY band NULLS FIRST, rank) AS examples "
    "  FROM examples WHERE model = $model AND source = $source AND unit >= $lo AND unit < $hi GROUP BY unit), "
    "bd AS ("
    "  SELECT unit, list({'band': band, 'q_lo': q_lo, 'q_hi': q_hi, 'lo': lo, 'hi': hi, "
    "    'count': count, 'share': share} ORDER BY band) AS bands "
    "  FROM bands WHERE model = $model AND source = $source AND unit >= $lo AND unit < $hi GROUP BY unit), "
    "lg AS ("
    "  SELECT unit, top_ids, top_values, bottom_ids, bottom_values FROM logits "
    "  WHERE model = $model AND source = $source AND unit >= $lo AND unit < $hi) "
    "SELECT u.model, u.source, u.unit, u.max, u.min, u.mean, u.std, u.density, u.n_tokens, "
    "  u.n_fired, u.cos_in_out, u.hist_edges, u.hist_counts, bd.bands, ex.examples, "
    "  lg.top_ids, lg.top_values, lg.bottom_ids, lg.bottom_values "
    "FROM unit_stats u LEFT JOIN bd USING (unit) LEFT JOIN ex USING (unit) LEFT JOIN lg USING (unit) "
    "WHERE u.model = $model AND u.source = $source AND u.unit >= $lo AND u.unit < $hi ORDER BY u.unit"
)


class _Pieces:
    """A write-only file for pyarrow that keeps what was written until taken. It
    counts every byte, so the Parquet footer's offsets stay right."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.pos = 0
        self.closed = False

    def write(self, data) -> int:
        data = bytes(data)
        self.parts.append(data)
        self.pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self.pos

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


FIRST_CHUNK = 64  # units of the first query: its bytes leave quickly, later ones are bigger


def chunks(con, model: str, source: str, fmt: str, units_per_chunk: int = 512) -> Iterator[bytes]:
    """The export of a source as byte pieces. `con`: the index (anything with a
    `cursor()`); the export opens its own cursor on it (the pieces may be asked for from
    any thread)."""
    if fmt not in FORMATS:
        raise ActscopeError(f"unknown export format {fmt!r}: expected parquet or jsonl")
    cur = con.cursor()
    try:
        rows = cur.execute(
            "SELECT coalesce(max(unit) + 1, 0) FROM unit_stats WHERE model = ? AND source = ?", [model, source]
        ).fetchall()
        n_units = int(rows[0][0])

        def tables():
            lo, size = 0, min(FIRST_CHUNK, units_per_chunk)
            while True:  # at least one query: an empty source still has a schema
                hi, size = lo + size, units_per_chunk
                yield cur.sql(QUERY, params={"model": model, "source": source, "lo": lo, "hi": hi}).to_arrow_table()
                lo = hi
                if lo >= n_units:
                    return

        if fmt == "parquet":
            yield from _parquet(tables())
        else:
            for table in tables():
                lines = b"".join(orjson.dumps(r) + b"\n" for r in table.to_pylist())
                if lines:
                    yield lines
    finally:
        cur.close()


def _parquet(tables: Iterator) -> Iterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = _Pieces()
    writer = None
    for table in tables:
        if writer is None:
            writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), table.schema)
        writer.write_table(table)
        piece = sink.take()
        if piece:
            yield piece
    if writer is not None:
        writer.close()
    yield sink.take()
