"""Read an actscope index (a DuckDB file) for the app: plain-data records, bound SQL.

The file is opened read-only. Each thread gets its own cursor (DuckDB connections are
not shared between threads). Records hold numbers and strings only: no tensors, no
HTML, no connections. The index never changes while it is open, so small derived
tables (the vocabulary, a source's unit table) are cached in memory.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actscope.indexer.errors import ActscopeError
from actscope.indexer.store import export, fingerprints
from actscope.indexer.store.resident import ResidentTables
from actscope.indexer.store.schema import SCHEMA_VERSION
from actscope.indexer.store.token_search import FocusTable, TokenVariants
from actscope.indexer.store.unit_table import UnitTable


@dataclass(frozen=True)
class ModelInfo:
    model: str
    spec: dict[str, Any]
    processing: dict[str, Any]
    n_layers: int
    d_model: int
    d_vocab: int
    n_ctx: int
    ctx: int
    bos_token_id: int
    eos_token_id: int
    n_sequences: int
    n_tokens: int
    row: dict[str, Any]  # the raw `models` row, as the live model loader wants it


@dataclass(frozen=True)
class SourceInfo:
    model: str
    slug: str
    hook_name: str
    kind: str  # 'neuron' | 'sae'
    layer: int
    n_units: int
    spec: dict[str, Any]
    band_levels: list[float]
    band_basis: str
    row: dict[str, Any]  # the raw `sources` row


@dataclass(frozen=True)
class UnitStats:
    max: float
    min: float
    mean: float
    std: float
    density: float
    n_tokens: int
    n_fired: int
    cos_in_out: float | None
    hist_edges: list[float]
    hist_counts: list[int]


@dataclass(slots=True)  # not frozen: its __init__ would cost 5x, for ~100 examples per unit page
class Example:
    """A window of one sequence; `acts[i]` is the activation on `token_ids[i]`. Read-only
    by convention."""

    seq: int
    pos: int  # focus position in the sequence
    act: float
    start: int  # sequence position of token_ids[0]
    token_ids: list[int]
    acts: list[float]

    @property
    def focus(self) -> int:
        return self.pos - self.start


@dataclass(frozen=True)
class Band:
    band: int
    q_lo: float
    q_hi: float
    lo: float
    hi: float
    count: int
    share: float
    stored: int  # examples stored for the band
    examples: list[Example] = field(default_factory=list)  # empty when not read (Store.unit's `bands`)


@dataclass(frozen=True)
class Logits:
    top_ids: list[int]
    top_values: list[float]
    bottom_ids: list[int]
    bottom_values: list[float]


@dataclass(frozen=True)
class UnitRecord:
    model: str
    source: str
    unit: int
    stats: UnitStats
    top: list[Example]
    bands: list[Band]
    logits: Logits | None


@dataclass(frozen=True)
class Liveness:
    """Which units of a source ever fired (activation > 0 on an indexed token): sorted
    unit indices of the units that did (`fired`) and of the dead ones (`dead`)."""

    fired: Any  # numpy int64 array
    dead: Any  # numpy int64 array


class Store:
    """A read-only actscope index. Safe to use from many threads."""

    def __init__(self, path: str | Path, resident_mb: int = 1024):
        """Open `path` read-only. Models whose examples fit in `resident_mb` MB are
        loaded into memory (see store_resident); others are read with SQL per request."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ActscopeError(f"{path}: no such index file (build one with `actscope index`)")
        import duckdb

        # Attached to a database instance of its own: duckdb.connect(path) would hand back
        # the instance already open on that path, which still reads the file the path
        # named before an index was rebuilt in place over it.
        self._con = duckdb.connect()
        quoted = str(self.path).replace("'", "''")
        try:
            self._con.execute(f"ATTACH '{quoted}' AS {_ALIAS} (READ_ONLY)")
        except duckdb.Error as exc:
            self._con.close()
            raise ActscopeError(f"{path}: cannot open it as a DuckDB index ({_first_line(exc)})") from exc
        self._con.execute(f"USE {_ALIAS}")
        self._local = threading.local()
        try:
            self._open(resident_mb)
        except duckdb.Error as exc:
            self._con.close()
            raise ActscopeError(f"{path}: {_damaged(exc)}") from exc
        except BaseException:
            self._con.close()
            raise

    def _open(self, resident_mb: int) -> None:
        self._check_version()
        self._vocab: dict[str, tuple[list[str], list[bytes]]] = {}
        self._hex: dict[str, tuple[list[str | None], frozenset[int]]] = {}
        self._lock = threading.Lock()
        self.meta = self._read_meta()
        self._models = {m.model: m for m in self._read_models()}
        self._sources = {(s.model, s.slug): s for s in self._read_sources()}
        self._unit_tables: dict[tuple[str, str], UnitTable] = {}
        self._liveness: dict[tuple[str, str], Liveness] = {}
        self._resident: dict[str, ResidentTables] = {}
        self._variants: dict[str, TokenVariants] = {}
        self._focus: dict[str, FocusTable] = {}
        self._derived: dict[tuple, Any] = {}  # fingerprints, reservoirs, decoders: read on first use
        for m in self._models:
            if ResidentTables.size_estimate(self._cur(), m) <= resident_mb * 2**20:
                self._resident[m] = ResidentTables.load(self._cur(), m)
        for m, slug in self._sources:
            if m in self._resident:
                self.liveness(m, slug)  # read now: pages served from memory query nothing

    @property
    def resident(self) -> bool:
        """True if every model is served from memory."""
        return set(self._resident) == set(self._models)

    # -- plumbing --------------------------------------------------------------------
    def _cur(self):
        cur = getattr(self._local, "cur", None)
        if cur is None:
            cur = self.cursor()
            self._local.cur = cur
        return cur

    def cursor(self):
        """A new cursor on the index (each thread needs its own)."""
        cur = self._con.cursor()
        cur.execute(f"USE {_ALIAS}")  # a cursor starts in the instance's own (empty) database
        return cur

    def verify(self) -> None:
        """Read every value of every table once: DuckDB checks each block's checksum as it
        reads it, so a damaged or truncated file fails here (ActscopeError) rather than on
        the request that happens to read the damaged block."""
        import duckdb

        cur = self.cursor()
        try:
            for (name,) in cur.execute(
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? ORDER BY table_name", [_ALIAS]
            ).fetchall():
                cur.execute(f'SELECT max(hash(t)) FROM "{name}" AS t').fetchall()  # hash(t): every column
        except duckdb.Error as exc:
            raise ActscopeError(f"{self.path}: {_damaged(exc)}") from exc
        finally:
            cur.close()

    def _all(self, sql: str, params: list[Any] | None = None) -> list[tuple]:
        return self._cur().execute(sql, params or []).fetchall()

    def close(self) -> None:
        self._con.close()

    def _check_version(self) -> None:
        import duckdb

        try:
            rows = self._all("SELECT value FROM meta WHERE key = 'schema_version'")
        except duckdb.CatalogException:
            raise ActscopeError(f"{self.path}: not an actscope index (no meta table)") from None
        if not rows:
            raise ActscopeError(f"{self.path}: not an actscope index (no schema_version)")
        found = rows[0][0]
        if str(found) != str(SCHEMA_VERSION):
            newer = str(found).isdigit() and int(found) > SCHEMA_VERSION
            raise ActscopeError(
                f"{self.path}: index schema version {found}, this actscope reads version "
                f"{SCHEMA_VERSION}; rebuild it with `actscope index`"
                + (" (or upgrade actscope: a newer version wrote it)" if newer else "")
            )

    def _read_meta(self) -> dict[str, Any]:
        meta = {}
        for key, value in self._all("SELECT key, value FROM meta ORDER BY key"):
            try:
                meta[key] = json.loads(value)
            except (TypeError, ValueError):
                meta[key] = value
        return meta

    def _read_models(self) -> list[ModelInfo]:
        cur = self._cur().execute("SELECT * FROM models ORDER BY model")
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            out.append(
                ModelInfo(
                    model=row["model"],
                    spec=_json(row["spec"]),
                    processing=_json(row["processing"]),
                    n_layers=row["n_layers"],
                    d_model=row["d_model"],
                    d_vocab=row["d_vocab"],
                    n_ctx=row["n_ctx"],
                    ctx=row["ctx"],
                    bos_token_id=row["bos_token_id"],
                    eos_token_id=row["eos_token_id"],
                    n_sequences=row["n_sequences"],
                    n_tokens=row["n_tokens"],
                    row=row,
                )
            )
        return out

    def _read_sources(self) -> list[SourceInfo]:
        # By layer, then as the run wrote them: the registry's order, each twin after its source.
        cur = self._cur().execute("SELECT * FROM sources ORDER BY model, layer, rowid")
        names = [d[0] for d in cur.description]
        out = []
        for values in cur.fetchall():
            row = dict(zip(names, values))
            out.append(
                SourceInfo(
                    model=row["model"],
                    slug=row["slug"],
                    hook_name=row["hook_name"],
                    kind=row["kind"],
                    layer=row["layer"],
                    n_units=row["n_units"],
                    spec=_json(row["spec"]),
                    band_levels=list(row["band_levels"]),
                    band_basis=row["band_basis"],
                    row=row,
                )
            )
        return out

    # -- models, sources, vocabulary -------------------------------------------------
    def models(self) -> list[ModelInfo]:
        return list(self._models.values())

    def model(self, model: str) -> ModelInfo | None:
        return self._models.get(model)

    def sources(self, model: str) -> list[SourceInfo]:
        return [s for (m, _), s in self._sources.items() if m == model]

    def source(self, model: str, slug: str) -> SourceInfo | None:
        return self._sources.get((model, slug))

    def vocab(self, model: str) -> list[str]:
        """Token strings indexed by token id (loaded once)."""
        return self._vocab_of(model)[0]

    def vocab_bytes(self, model: str) -> list[bytes]:
        """Each token's raw bytes, indexed by token id (loaded once)."""
        return self._vocab_of(model)[1]

    def _vocab_of(self, model: str) -> tuple[list[str], list[bytes]]:
        vocab = self._vocab.get(model)
        if vocab is None:
            with self._lock:
                vocab = self._vocab.get(model)
                if vocab is None:
                    info = self._models.get(model)
                    size = info.d_vocab if info else 0
                    rows = self._all("SELECT token_id, token, token_bytes FROM vocab WHERE model = ?", [model])
                    size = max([size] + [tid + 1 for tid, _, _ in rows])
                    strings = [""] * size
                    raw = [b""] * size
                    for tid, tok, tok_bytes in rows:
                        strings[tid] = tok
                        raw[tid] = bytes(tok_bytes)
                    vocab = (strings, raw)
                    self._vocab[model] = vocab
        return vocab

    def token_hex(self, model: str, ids: list[int]) -> list[str | None]:
        """Per token: its bytes in hex where they are not valid UTF-8 on their own, else
        None (the JSON's `token_bytes`)."""
        found = self._hex.get(model)
        if found is None:
            hexes = [None if is_utf8(b) else b.hex() for b in self.vocab_bytes(model)]
            found = (hexes, frozenset(i for i, h in enumerate(hexes) if h is not None))
            self._hex[model] = found
        hexes, partial = found
        if partial.isdisjoint(ids):
            return [None] * len(ids)  # the common case: one C-level test of every id
        if min(ids) >= 0:
            try:
                return list(map(hexes.__getitem__, ids))  # every id in the vocabulary
            except IndexError:
                pass
        n = len(hexes)
        return [hexes[i] if 0 <= i < n else None for i in ids]

    def token_strings(self, model: str, ids: list[int]) -> list[str]:
        vocab = self.vocab(model)
        if not ids or min(ids) >= 0:
            try:
                return list(map(vocab.__getitem__, ids))  # the common case: every id in the vocabulary
            except IndexError:
                pass
        n = len(vocab)
        return [vocab[i] if 0 <= i < n else f"<{i}>" for i in ids]

    def token_variants(self, model: str) -> TokenVariants:
        """The vocabulary's spellings of a token, with and without a leading space, in
        any case (built once per model)."""
        found = self._variants.get(model)
        if found is None:
            found = TokenVariants(self.vocab(model))
            with self._lock:
                self._variants[model] = found
        return found

    def focus_table(self, model: str) -> FocusTable:
        """Which units' top examples focus on which token (built once per model, on the
        first token search: one pass over the top examples)."""
        found = self._focus.get(model)
        if found is None:
            with self._lock:
                found = self._focus.get(model)
                if found is None:
                    found = FocusTable.load(self._cur(), model)
                    self._focus[model] = found
        return found

    def top_examples(self, model: str, wanted: list[tuple[str, int, int]]) -> list[Example | None]:
        """The top examples (source, unit, rank) of `wanted`, in that order (None where
        there is none)."""
        resident = self._resident.get(model)
        if resident is not None:
            rows = [resident.top_example_row(source, unit, rank) for source, unit, rank in wanted]
            return [None if r is None else Example(*r) for r in rows]
        if not wanted:
            return []
        found = {
            (str(src), int(u), int(r)): Example(int(seq), int(pos), float(act), int(start), list(ids), list(acts))
            for src, u, r, seq, pos, act, start, acts, ids in self._all(
                "SELECT e.source, e.unit, e.rank, e.seq, e.pos, e.act, e.start, e.acts, "
                "list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) "
                "FROM examples e JOIN sequences s ON s.model = e.model AND s.seq = e.seq "
                "JOIN (SELECT unnest(?) AS source, unnest(?) AS unit, unnest(?) AS rank) w "
                "ON w.source = e.source AND w.unit = e.unit AND w.rank = e.rank "
                "WHERE e.model = ? AND e.band IS NULL",
                [[w[0] for w in wanted], [w[1] for w in wanted], [w[2] for w in wanted], model],
            )
        }
        return [found.get(w) for w in wanted]

    # -- units -----------------------------------------------------------------------
    def unit(self, model: str, source: str, unit: int, bands: Collection[int] | None = None) -> UnitRecord | None:
        """A unit's record: its statistics, top examples, bands and logit effects. With
        `bands`, only those bands carry their examples (the others their number, `stored`):
        a page shows one set of examples."""
        resident = self._resident.get(model)
        if resident is not None:
            st = resident.stats_row(source, unit)
            if st is None:
                return None
            example_rows = resident.example_rows(source, unit, bands)
            sizes = resident.band_sizes(source, unit)
            band_rows = resident.band_rows(source, unit)
            logit_row = resident.logit_row(source, unit)
        else:
            st = self._stats_sql(model, source, unit)
            if st is None:
                return None
            example_rows, band_rows, logit_row = self._unit_rows_sql(model, source, unit)
            sizes = Counter(row[0] for row in example_rows if row[0] is not None)
            if bands is not None:
                example_rows = [row for row in example_rows if row[0] is None or row[0] in bands]
        stats = UnitStats(**st)
        top: list[Example] = []
        by_band: dict[int, list[Example]] = {}
        for band, seq, pos, act, start, acts, ids in example_rows:
            ex = Example(seq, pos, act, start, ids, acts)
            (top if band is None else by_band.setdefault(band, [])).append(ex)
        band_list = [
            Band(b, ql, qh, lo, hi, c, sh, sizes.get(b, 0), by_band.get(b, []))
            for b, ql, qh, lo, hi, c, sh in band_rows
        ]
        logits = Logits(*logit_row) if logit_row is not None else None
        return UnitRecord(model, source, unit, stats, top, band_list, logits)

    def _stats_sql(self, model: str, source: str, unit: int) -> dict[str, Any] | None:
        rows = self._all(
            "SELECT max, min, mean, std, density, n_tokens, n_fired, cos_in_out, hist_edges, "
            "hist_counts FROM unit_stats WHERE model = ? AND source = ? AND unit = ?",
            [model, source, unit],
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

    def _unit_rows_sql(self, model: str, source: str, unit: int):
        params = [model, source, unit]
        example_rows = [
            (
                None if band is None else int(band),
                int(seq),
                int(pos),
                float(act),
                int(start),
                [float(a) for a in acts],
                list(ids),
            )
            for band, seq, pos, act, start, acts, ids in self._all(
                "SELECT e.band, e.seq, e.pos, e.act, e.start, e.acts, "
                "list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) "
                "FROM examples e JOIN sequences s ON s.model = e.model AND s.seq = e.seq "
                "WHERE e.model = ? AND e.source = ? AND e.unit = ? "
                "ORDER BY e.band NULLS FIRST, e.rank",
                params,
            )
        ]
        band_rows = [
            (int(b), float(ql), float(qh), float(lo), float(hi), int(c), float(sh))
            for b, ql, qh, lo, hi, c, sh in self._all(
                "SELECT band, q_lo, q_hi, lo, hi, count, share FROM bands "
                "WHERE model = ? AND source = ? AND unit = ? ORDER BY band",
                params,
            )
        ]
        rows = self._all(
            "SELECT top_ids, top_values, bottom_ids, bottom_values FROM logits "
            "WHERE model = ? AND source = ? AND unit = ?",
            params,
        )
        logit_row = None
        if rows:
            t_ids, t_vals, b_ids, b_vals = rows[0]
            logit_row = (list(t_ids), [float(v) for v in t_vals], list(b_ids), [float(v) for v in b_vals])
        return example_rows, band_rows, logit_row

    def unit_table(self, model: str, source: str) -> UnitTable:
        """Every unit of a source with its headline numbers and sort orders (built once)."""
        key = (model, source)
        table = self._unit_tables.get(key)
        if table is not None:
            return table
        rows = self._all(
            "WITH top AS ("
            "  SELECT e.unit, s.token_ids[e.pos + 1] AS tok FROM examples e "
            "  JOIN sequences s ON s.model = e.model AND s.seq = e.seq "
            "  WHERE e.model = ? AND e.source = ? AND e.band IS NULL AND e.rank = 0) "
            "SELECT u.unit, u.max, u.mean, u.density, u.cos_in_out, top.tok "
            "FROM unit_stats u LEFT JOIN top ON top.unit = u.unit "
            "WHERE u.model = ? AND u.source = ? ORDER BY u.unit",
            [model, source, model, source],
        )
        table = UnitTable.from_rows(rows)
        with self._lock:
            self._unit_tables[key] = table
        return table

    def liveness(self, model: str, source: str) -> Liveness:
        """The fired and dead units of a source (read once, cached)."""
        key = (model, source)
        found = self._liveness.get(key)
        if found is not None:
            return found
        import numpy as np

        info = self._sources.get(key)
        n = info.n_units if info else 0
        rows = self._all(
            "SELECT unit FROM unit_stats WHERE model = ? AND source = ? AND n_fired > 0 ORDER BY unit", [model, source]
        )
        fired = np.array([r[0] for r in rows], dtype=np.int64)
        found = Liveness(fired, np.setdiff1d(np.arange(n, dtype=np.int64), fired))
        with self._lock:
            self._liveness[key] = found
        return found

    def unit_vectors(self, model: str, source: str):
        """[n_units, width] float32 numpy array of the vectors stored for a source's units
        (the `directions` table: random directions), or None if it stores none."""
        import numpy as np

        rows = self._all(
            "SELECT direction FROM directions WHERE model = ? AND source = ? ORDER BY unit", [model, source]
        )
        if not rows:
            return None
        return np.array([r[0] for r in rows], dtype=np.float32)

    def _once(self, key: tuple, read) -> Any:
        """read(cursor), kept under `key` (None results too): read once, however many threads ask."""
        if key in self._derived:
            return self._derived[key]
        with self._lock:
            if key not in self._derived:
                self._derived[key] = read(self._cur())
            return self._derived[key]

    def reservoir(self, model: str) -> fingerprints.Reservoir | None:
        """The positions the model's fingerprints are taken at (None: the index has none)."""
        return self._once(("reservoir", model), lambda cur: fingerprints.read_reservoir(cur, model, self.meta))

    def fingerprints(self, model: str, source: str) -> fingerprints.SourcePrints | None:
        """A source's fingerprints, standardised for correlations (None: none stored)."""
        reservoir = self.reservoir(model)
        if reservoir is None:
            return None
        return self._once(
            ("fingerprints", model, source), lambda cur: fingerprints.read_source(cur, model, source, reservoir.n)
        )

    def decoders(self, model: str, source: str):
        """[n_units, d_model] float32 unit-norm decoder directions of a source (SAE
        features), or None."""
        return self._once(("decoders", model, source), lambda cur: fingerprints.read_decoders(cur, model, source))

    def sequence(self, model: str, seq: int) -> list[int] | None:
        resident = self._resident.get(model)
        if resident is not None:
            return resident.sequence(seq)
        rows = self._all("SELECT token_ids FROM sequences WHERE model = ? AND seq = ?", [model, seq])
        return list(rows[0][0]) if rows else None

    def export_chunks(self, model: str, source: str, fmt: str, units_per_chunk: int = 512) -> Iterator[bytes]:
        """Every unit of a source (stats, bands, examples, logits) as Parquet or JSON
        lines, in pieces: one query per `units_per_chunk` units (rows are stored in unit
        order, so each reads only its units' row groups), one Parquet row group or run of
        lines per query. The first piece comes after one chunk's query, and memory holds
        one chunk whatever the source's size."""
        return export.chunks(self, model, source, fmt, units_per_chunk)


_ALIAS = "actscope_index"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _damaged(exc: BaseException) -> str:
    return f"the index file is damaged or truncated ({_first_line(exc)}); rebuild it with `actscope index`"


def is_utf8(raw: bytes) -> bool:
    """Whether a token's bytes decode on their own (else they hold part of a character)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _json(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if text else {}
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {"value": value}
