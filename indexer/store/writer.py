"""Writing an index: a temporary DuckDB file, renamed into place only when complete.

Sequences are appended while the corpus streams (so memory does not grow with corpus
length); everything else is written once at the end from Arrow tables. All database work
runs, in order, on one background thread: the caller goes on building the next table
while DuckDB (which releases the GIL) inserts the last one. Errors surface at the next
call that waits: `flush(wait=True)`, `finish` or `close`.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from actscope.indexer.errors import ActscopeError
from actscope.indexer.store import schema


def fixed_width_lists(rows: np.ndarray) -> pa.ListArray:
    """A list column with one list per row of `rows` [n, width], without a Python object
    per value."""
    offsets = np.arange(0, rows.size + 1, rows.shape[1], dtype=np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(np.ascontiguousarray(rows).reshape(-1)))


def repeated(value: str, n: int) -> pa.DictionaryArray:
    """A string column of n copies of `value`, as a dictionary of that one string, where
    `pa.array` needs a list of n Python strings (3 ms per 100k rows on an idle machine;
    the end of the benchmark's run builds 560k such rows, a model and a source column per
    example, band, unit and logit row)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value]))


# DuckDB hands every free page of the C heap back to the kernel (malloc_trim) whenever a
# database instance starts or stops, and whenever one of its worker threads has been idle
# for half a second. The forward passes after a trim fault in and zero the memory they had
# already paged in, hundreds of MB per batch of the next passes (memory.py keeps the heap
# for exactly this reason). So every index is written through one in-memory instance per
# process, started once and kept: each file is ATTACHed to it and DETACHed when done, and
# the instance runs its work on the calling thread only, with no worker threads to idle.
# Its allocator-flush thresholds are raised too, so that no large task or bulk free of a
# big index trims either; so configured, only the instance's start and stop were seen to.
_WRITER_DATABASE_CONFIG = {
    "threads": 1,
    "allocator_flush_threshold": "1000GB",
    "allocator_bulk_deallocation_flush_threshold": "1000GB",
}
_writer_database = None
_attached = itertools.count()


def _writer_connection():
    """A new connection to the process's writer instance (made on first use)."""
    import duckdb

    global _writer_database
    if _writer_database is None:
        _writer_database = duckdb.connect(":memory:", config=_WRITER_DATABASE_CONFIG)
        # Activations compress poorly: ALP, DuckDB's float compression, costs more writing time than it saves space.
        _writer_database.execute("SET GLOBAL disabled_compression_methods = 'alp,alprd'")
    return _writer_database.cursor()


def delete_index_file(path: Path) -> None:
    """Remove a DuckDB file and its write-ahead log, where they exist."""
    for part in (Path(path), Path(str(path) + ".wal")):
        part.unlink(missing_ok=True)


def add_meta(path: Path, **values: str) -> None:
    """Record facts about a finished index file (e.g. what built it) in its meta table."""
    import duckdb

    con = duckdb.connect(str(path))
    try:
        con.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(values.items()))
    finally:
        con.close()


class DamagedPartialIndex(ActscopeError):
    """A killed run's partial index file that DuckDB refuses (a write torn by the kill):
    a resumed run writes it again."""


# DuckDB's words for a file it cannot read back (as a torn write leaves one). Any other
# error (another process holding the file's lock, no permission) is not damage: the
# file is left as it is.
_DAMAGE = ("Corrupt database file", "MetadataReader", "metadata pointer")


class StoreWriter:
    def __init__(self, tmp_path: Path, model: str, fresh: bool) -> None:
        import duckdb

        self.tmp_path = Path(tmp_path)
        self.model = model
        if fresh:
            delete_index_file(self.tmp_path)
        elif not self.tmp_path.exists():
            raise ActscopeError(f"--resume: the partial index {self.tmp_path} is missing; rerun without --resume")
        self.con = _writer_connection()
        self._alias = f"actscope_index_{next(_attached)}"
        quoted = str(self.tmp_path).replace("'", "''")
        try:
            self.con.execute(f"ATTACH '{quoted}' AS {self._alias}")
        except duckdb.Error as exc:
            self.con.close()
            if not fresh and any(words in str(exc) for words in _DAMAGE):
                raise DamagedPartialIndex(f"the partial index {self.tmp_path} cannot be opened: {exc}") from exc
            raise ActscopeError(f"cannot open {self.tmp_path} for writing: {exc}") from exc
        try:
            self.con.execute(f"USE {self._alias}")
            if fresh:
                schema.create_all(self.con)
        except BaseException:
            self._detach()  # else the file stays attached and the next writer of it fails
            raise
        self._pending: list[tuple[int, np.ndarray]] = []
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="actscope-writer")
        self._submitted: list[Future] = []

    def _submit(self, work, *args) -> None:
        # Work already done is dropped (its error, if any, raised now): the list stays short.
        running = []
        for future in self._submitted:
            if future.done():
                future.result()
            else:
                running.append(future)
        self._submitted = running
        self._submitted.append(self._worker.submit(work, *args))

    def wait(self) -> None:
        """Until everything submitted is in the database; raises the first error."""
        submitted, self._submitted = self._submitted, []
        for future in submitted:
            future.result()

    def rewind(self, n_sequences: int) -> None:
        """Back to the state of the checkpoint a resumed run starts from: the sequences
        written after it dropped, and whatever a run killed while finishing had written
        of the tables that are written at the end (finalize writes them again)."""
        self._submit(self.con.execute, "DELETE FROM sequences WHERE model = ? AND seq >= ?", [self.model, n_sequences])
        for name in schema.TABLES:
            if name not in ("sequences", "meta"):
                self._submit(self.con.execute, f"DELETE FROM {name}")
        self._submit(self.con.execute, "DELETE FROM meta WHERE key <> 'schema_version'")

    def add_sequences(self, first_seq: int, tokens: np.ndarray) -> None:
        self._pending.append((first_seq, tokens.astype(np.int32, copy=False)))

    def flush(self, wait: bool = False) -> None:
        """Write the sequences added so far; with `wait`, return once they are on disk."""
        if self._pending:
            self._write_pending()
        if wait:
            self.wait()

    def _write_pending(self) -> None:
        seqs = np.concatenate([first + np.arange(len(rows)) for first, rows in self._pending])
        rows = np.concatenate([rows for _, rows in self._pending])
        token_lists = fixed_width_lists(rows)
        self.write_table(
            "sequences",
            pa.table(
                {
                    "model": repeated(self.model, len(seqs)),
                    "seq": pa.array(seqs.astype(np.int32)),
                    "token_ids": token_lists,
                }
            ),
        )
        self._pending.clear()
        self._submit(self.con.execute, "CHECKPOINT")

    def write_table(self, name: str, table: pa.Table) -> None:
        if name not in schema.TABLES:
            raise ValueError(f"unknown table {name}")
        self._submit(self._insert, name, table)

    def _insert(self, name: str, table: pa.Table) -> None:
        self.con.register("incoming", table)
        try:
            self.con.execute(f"INSERT INTO {name} BY NAME SELECT * FROM incoming")
        finally:
            self.con.unregister("incoming")

    def write_rows(self, name: str, rows: list[dict[str, Any]]) -> None:
        if rows:
            self.write_table(name, pa.Table.from_pylist(rows))

    def set_meta(self, key: str, value: Any, **more: Any) -> None:
        """meta[key] = value (JSON text unless a string), and likewise for `more`, in one
        statement: each statement is a few ms of DuckDB's at the end of a run."""
        items = {key: value, **more}
        texts = [v if isinstance(v, str) else json.dumps(v, default=str) for v in items.values()]
        placeholders = ", ".join(["(?, ?)"] * len(items))
        params = [part for pair in zip(items, texts) for part in pair]
        self._submit(self.con.execute, f"INSERT OR REPLACE INTO meta VALUES {placeholders}", params)

    def finish(self, out_path: Path, before_rename: Callable[[], None] | None = None) -> None:
        """Checkpoint and close the file, call `before_rename` (the run removes its
        checkpoint there), then atomically move the file to `out_path`. The checkpoint goes
        before the rename: a run killed in between starts over on --resume, where a
        checkpoint left behind would point at a partial file that is no longer there."""
        self.flush()
        self._submit(self.con.execute, "CHECKPOINT")
        self.close()
        if before_rename is not None:
            before_rename()
        os.replace(self.tmp_path, out_path)

    def close(self) -> None:
        """Wait for the submitted work (raising its first error) and close the file."""
        try:
            self.wait()
        finally:
            self._worker.shutdown(wait=True, cancel_futures=True)
            self._detach()

    def _detach(self) -> None:
        try:
            self.con.execute("USE memory")
            self.con.execute(f"DETACH {self._alias}")
        finally:
            self.con.close()
