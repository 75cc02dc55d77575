"""Read an actscope index (a DuckDB file) for the app: plain-data records, bound SQL.

The file is opened read-only. Each thread gets its own cursor (DuckDB connections are
not shared between threads). Records hold numbers and strings only: no tensors, no
HTML, no connections. The index never changes while it is open, so small derived
tables (the vocabulary, a source's unit table) are cached in memory.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import Counter
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actscope.indexer.errors import ActscopeError
from actscope.indexer.store import export, fingerprints, unit_sql
from actscope.indexer.store.budget import ResidentBudget
from actscope.indexer.store.loader import SourceLoader
from actscope.indexer.store.resident import SequenceTable, SourceTables
from actscope.indexer.store.row_index import RowIndex
from actscope.indexer.store.schema import SCHEMA_VERSION
from actscope.indexer.store.token_search import FocusTable, SqlFocus
from actscope.indexer.store.token_variants import TokenVariants
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

    def __init__(self, path: str | Path, resident_mb: float = 1024):
        """Open `path` read-only. What the store keeps in memory stays within `resident_mb`
        MB (store/budget.py): a model that fits whole is loaded now; otherwise each
        source's unit data is loaded in the background on its first visit while it fits,
        and whatever does not fit is read with SQL per request."""
        self.path = Path(path)
        if not self.path.is_file():
            raise ActscopeError(f"{path}: no such index file (build one with `actscope index`)")
        import duckdb

        # Attached to a database instance of its own: duckdb.connect(path) would hand back
        # the instance already open on that path, which still reads the file the path
        # named before an index was rebuilt in place over it.
        # DuckDB's own cache of the file's blocks is bounded too: by default it may grow to
        # most of the machine's memory (a full read of a 2 GB index left 6 GB resident).
        self._con = duckdb.connect(config={"memory_limit": DUCKDB_MEMORY_LIMIT})
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

    def _open(self, resident_mb: float) -> None:
        self._check_version()
        self._vocab: dict[str, tuple[list[str], list[bytes]]] = {}
        self._hex: dict[str, tuple[list[str | None], frozenset[int]]] = {}
        self._lock = threading.Lock()
        self.meta = self._read_meta()
        self._models = {m.model: m for m in self._read_models()}
        self._sources = {(s.model, s.slug): s for s in self._read_sources()}
        self._variants: dict[str, TokenVariants] = {}
        self._focus: dict[str, FocusTable] = {}
        self._derived: dict[tuple, Any] = {}  # reservoirs, and what an index lacks (None): read on first use
        self._derived_lock = threading.Lock()  # not the store's lock: reading fingerprints takes seconds
        self._loader = SourceLoader(self._load_part)
        self._loading_cursor = None
        self._unordered: set[tuple[str, str]] = set()  # sources whose rows are not in unit order
        self._narrowed: dict[str, float] = {}  # per model: the largest bytes held / estimate of a source loaded
        self._rows_lock = threading.Lock()
        self.budget = ResidentBudget(int(resident_mb * 2**20), on_evict=self._evicted)
        for m in self._models:
            estimate = self._model_estimate(m)
            if estimate * 1.1 > self.budget.limit:
                continue  # each source loaded on its first visit, while it fits
            slugs = [slug for model, slug in self._sources if model == m]
            if estimate <= EAGER_BYTES:  # a small index: all of it now, so no page ever queries
                for slug in slugs:
                    self._load_source(m, slug)
                for slug in slugs:
                    self.liveness(m, slug)
            else:  # a large one that fits: loaded in the background, pages answered meanwhile
                for slug in slugs:
                    self._loader.request(m, slug)
                self._loader.request(m, None)  # then its token search lookup: no first search waits for it

    def _model_estimate(self, model: str) -> int:
        """Bytes of the model's unit data in memory, estimated from row counts and a
        sample of list lengths (no full scan)."""
        if self.budget.limit <= 0:
            return 2**62  # nothing is kept: no need to count
        n_rows = {
            name: self._all(f"SELECT count(*) FROM {name} WHERE model = ?", [model])[0][0]
            for name in ("unit_stats", "bands", "logits", "examples")
        }
        (acts,) = self._all("SELECT coalesce(avg(len(acts)), 0) FROM (SELECT acts FROM examples LIMIT 2048)")[0]
        (hist,) = self._all(
            "SELECT coalesce(avg(len(hist_edges) + len(hist_counts)), 0) FROM (SELECT * FROM unit_stats LIMIT 2048)"
        )[0]
        (logit,) = self._all(
            "SELECT coalesce(avg(len(top_ids) + len(bottom_ids)), 0) FROM (SELECT * FROM logits LIMIT 2048)"
        )[0]
        n_units = sum(s.n_units for (m, _), s in self._sources.items() if m == model)
        estimate = (
            n_rows["unit_stats"] * (80 + hist * 8)
            + n_rows["bands"] * 56
            + n_rows["logits"] * (16 + logit * 8)
            + n_rows["examples"] * (24 + acts * 4)
            + n_units * 32
        )
        return int(estimate)

    # -- what is held in memory -------------------------------------------------------
    def _sequences(self, cur, model: str) -> SequenceTable | None:
        """The model's sequences if they are in memory, loaded now (with `cur`) if they fit."""
        key = ("sequences", model)
        found = self.budget.get(key)
        if found is None and self.budget.could_admit(SequenceTable.size_estimate(cur, model)):
            found = SequenceTable.load(cur, model)
            if not self.budget.admit(key, found, found.nbytes):
                return None
        return found

    def _load_part(self, model: str, slug: str | None) -> bool:
        """The background loader's job: a source's unit data, or (None) the model's token
        search lookup."""
        if slug is not None:
            return self._load_source(model, slug)
        with self._background_cursor() as cur:
            return isinstance(self.focus_table(model, cur), FocusTable)

    @contextlib.contextmanager
    def _background_cursor(self) -> Iterator[Any]:
        """A cursor of its own for a background load, which close() interrupts."""
        cur = self.cursor()
        self._loading_cursor = cur
        try:
            yield cur
        finally:
            self._loading_cursor = None
            cur.close()

    def _load_source(self, model: str, slug: str) -> bool:
        """A source's unit data into memory, if it fits the budget's free room."""
        key = ("unit data", model, slug)
        if key in self.budget:
            return True
        info = self._sources[(model, slug)]
        with self._background_cursor() as cur:
            estimate = SourceTables.size_estimate(cur, model, slug, info.n_units)
            # The estimate is at full width; narrowed columns make a source smaller, by
            # about the share the model's sources loaded so far took.
            if estimate * self._narrowed.get(model, 1.0) > self.budget.room():
                return False
            sequences = self._sequences(cur, model)
            if sequences is None:
                return False
            tables = SourceTables.load(cur, model, slug, info.n_units, sequences)
        if estimate > 0:
            share = min(1.0, tables.nbytes / estimate)
            self._narrowed[model] = max(share, self._narrowed[model]) if model in self._narrowed else share
        return self.budget.admit(key, tables, tables.nbytes, spare=True)

    def _evicted(self, key) -> None:
        if key[0] == "unit data":
            self._loader.forget(key[1], key[2])

    def _tables(self, model: str, source: str) -> SourceTables | None:
        """The source's unit data if in memory; else None, and its loading is asked for."""
        found = self.budget.get(("unit data", model, source))
        if found is None and (model, source) in self._sources:
            self._loader.request(model, source)
        return found

    def settle(self, timeout: float | None = None) -> None:
        """Wait until the sources asked for so far are loaded (or found not to fit)."""
        self._loader.wait(timeout)

    @property
    def resident_bytes(self) -> int:
        """Bytes of index data the store holds in memory (at most the budget)."""
        return self.budget.used

    @property
    def resident(self) -> bool:
        """True if every unit of every model is served from memory."""
        return all(("unit data", m, s) in self.budget for m, s in self._sources)

    def in_memory(self, model: str, source: str) -> bool:
        """True if a unit page of the source needs no query: its unit data, its liveness
        and the model's sequences are held."""
        held = self.budget
        return (
            ("unit data", model, source) in held
            and ("liveness", model, source) in held
            and ("sequences", model) in held
        )

    def search_in_memory(self, model: str) -> bool:
        """True if a token search of the model needs no query: its focus table and
        vocabulary are held, and every source's unit data (the snippets' examples)."""
        return (
            ("search", model) in self.budget
            and model in self._vocab
            and all(("unit data", m, s) in self.budget for m, s in self._sources if m == model)
        )

    def sequences_held(self, model: str) -> bool:
        """Whether the model's sequences are in memory (loaded now if they fit)."""
        return self._sequences(self._cur(), model) is not None

    def hold(self, key: tuple, value: Any, nbytes: int) -> bool:
        """Keep a part derived from the index (e.g. the app's encoded corpus) within the
        budget, as a kept part under ("derived", *key); False if it does not fit."""
        return self.budget.admit(("derived", *key), value, nbytes)

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
        self._loader.stop()  # no load starts from now on
        loading = self._loading_cursor
        if loading is not None:
            with contextlib.suppress(Exception):
                loading.interrupt()  # the load in progress fails at once and is dropped
        self._loader.wait()
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

    def focus_table(self, model: str, cur=None) -> FocusTable | SqlFocus:
        """Which units' top examples focus on which token: in memory if it fits the budget
        (built once per model, after the sources' background loads or on the first token
        search: one pass over the top examples, each group of spellings ranked), else a
        search that queries each time. `cur`: the cursor to build it with."""
        key = ("search", model)
        found = self.budget.get(key)
        if found is not None:
            return found
        sql = SqlFocus(self.cursor, model)
        groups = self.token_variants(model).group_of()  # before the lock: the vocabulary takes it
        with self._lock:
            found = self.budget.get(key)
            if found is not None:
                return found
            cur = cur or self._cur()
            if self.budget.could_admit(FocusTable.size_estimate(cur, model)):
                # Rows merged per group of spellings: a search for some of a group's tokens only goes to SQL.
                table = FocusTable.load(cur, model, groups, partial=sql.search)
                if self.budget.admit(key, table, table.nbytes):
                    return table
        return sql

    def top_examples(self, model: str, wanted: list[tuple[str, int, int]]) -> list[Example | None]:
        """The top examples (source, unit, rank) of `wanted`, in that order (None where
        there is none)."""
        found: dict[tuple[str, int, int], Example | None] = {}
        held: dict[str, SourceTables | None] = {}
        for source, unit, rank in wanted:
            if source not in held:  # each source's tables looked up once (each lookup takes a lock)
                held[source] = self._tables(model, source)
            tables = held[source]
            if tables is not None:
                row = tables.top_example_row(unit, rank)
                found[(source, unit, rank)] = None if row is None else Example(*row)
        rest = [w for w in wanted if w not in found]
        if rest:
            by_rowid = unit_sql.top_examples(
                self._all,
                model,
                rest,
                lambda source: self._row_index(model, source),
                self.budget.get(("sequences", model)),
            )
            found.update({w: None if row is None else Example(*row) for w, row in by_rowid.items()})
            rest = [w for w in rest if w not in found]
        if rest:
            found.update(
                {
                    (str(src), int(u), int(r)): Example(
                        int(seq), int(pos), float(act), int(start), list(ids), list(acts)
                    )
                    for src, u, r, seq, pos, act, start, acts, ids in self._all(
                        "SELECT e.source, e.unit, e.rank, e.seq, e.pos, e.act, e.start, e.acts, "
                        "list_slice(s.token_ids, e.start + 1, e.start + len(e.acts)) "
                        "FROM examples e JOIN sequences s ON s.model = e.model AND s.seq = e.seq "
                        "JOIN (SELECT unnest(?) AS source, unnest(?) AS unit, unnest(?) AS rank) w "
                        "ON w.source = e.source AND w.unit = e.unit AND w.rank = e.rank "
                        "WHERE e.model = ? AND e.band IS NULL",
                        [[w[0] for w in rest], [w[1] for w in rest], [w[2] for w in rest], model],
                    )
                }
            )
        return [found.get(w) for w in wanted]

    # -- units -----------------------------------------------------------------------
    def unit(self, model: str, source: str, unit: int, bands: Collection[int] | None = None) -> UnitRecord | None:
        """A unit's record: its statistics, top examples, bands and logit effects. With
        `bands`, only those bands carry their examples (the others their number, `stored`):
        a page shows one set of examples."""
        tables = self._tables(model, source)
        if tables is not None:
            st = tables.stats_row(unit)
            if st is None:
                return None
            example_rows = tables.example_rows(unit, bands)
            sizes = tables.band_sizes(unit)
            band_rows = tables.band_rows(unit)
            logit_row = tables.logit_row(unit)
        else:
            rows_at = self._row_index(model, source)
            st = unit_sql.stats(self._all, model, source, unit, rows_at)
            if st is None:
                return None
            sequences = self.budget.get(("sequences", model))
            example_rows, band_rows, logit_row = unit_sql.unit_rows(self._all, model, source, unit, rows_at, sequences)
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

    def _row_index(self, model: str, source: str) -> RowIndex | None:
        """Where the source's units' rows are, by rowid (kept if it fits; None: filter by unit)."""
        key = ("rows", model, source)
        found = self.budget.get(key)
        info = self._sources.get((model, source))
        if found is not None or info is None or (model, source) in self._unordered:
            return found
        if not self.budget.could_admit(RowIndex.size_estimate(info.n_units)):
            return None
        with self._rows_lock:  # not the store's lock: the first search holds that for seconds
            found = self.budget.get(key)
            if found is None and (model, source) not in self._unordered:
                found = RowIndex.load(self._cur(), model, source, info.n_units)
                if found is None:
                    self._unordered.add((model, source))
                elif not self.budget.admit(key, found, found.nbytes):
                    found = None
        return found

    def unit_table(self, model: str, source: str) -> UnitTable:
        """Every unit of a source with its headline numbers and sort orders: kept in
        memory if it fits the budget, else read for this request (its sort order then
        computed for the request too)."""
        key = ("table", model, source)
        table = self.budget.get(key)
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
        if self.budget.could_admit(table.nbytes_sorted):
            table.sort_all()
            self.budget.admit(key, table, table.nbytes)
        return table

    def liveness(self, model: str, source: str) -> Liveness:
        """The fired and dead units of a source (kept if it fits the budget)."""
        key = ("liveness", model, source)
        found = self.budget.get(key)
        if found is not None:
            return found
        import numpy as np

        info = self._sources.get((model, source))
        n = info.n_units if info else 0
        rows = self._all(
            "SELECT unit FROM unit_stats WHERE model = ? AND source = ? AND n_fired > 0 ORDER BY unit", [model, source]
        )
        fired = np.array([r[0] for r in rows], dtype=np.int64)
        found = Liveness(fired, np.setdiff1d(np.arange(n, dtype=np.int64), fired))
        self.budget.admit(key, found, found.fired.nbytes + found.dead.nbytes)
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

    def _within_budget(self, key: tuple, read, nbytes) -> Any:
        """read(cursor) kept in the budget under `key` (a spare part: it only takes free
        room) if it fits, else read for this call and dropped after it. None results are
        remembered. One read at a time: what does not fit is in memory once."""
        if key in self._derived:
            return None
        found = self.budget.get(key)
        if found is not None:
            return found
        with self._derived_lock:
            found = self.budget.get(key)
            if found is None and key not in self._derived:
                found = read(self._cur())
                if found is None:
                    self._derived[key] = None
                else:
                    self.budget.admit(key, found, nbytes(found), spare=True)
            return found

    def reservoir(self, model: str) -> fingerprints.Reservoir | None:
        """The positions the model's fingerprints are taken at (None: the index has none)."""
        return self._once(("reservoir", model), lambda cur: fingerprints.read_reservoir(cur, model, self.meta))

    def fingerprints(self, model: str, source: str) -> fingerprints.SourcePrints | None:
        """A source's fingerprints, standardised for correlations (None: none stored)."""
        reservoir = self.reservoir(model)
        if reservoir is None:
            return None
        return self._within_budget(
            ("fingerprints", model, source),
            lambda cur: fingerprints.read_source(cur, model, source, reservoir.n),
            lambda prints: prints.nbytes,
        )

    def decoders(self, model: str, source: str):
        """[n_units, d_model] float32 unit-norm decoder directions of a source (SAE
        features), or None."""
        return self._within_budget(
            ("decoders", model, source),
            lambda cur: fingerprints.read_decoders(cur, model, source),
            lambda vectors: vectors.nbytes,
        )

    def sequence(self, model: str, seq: int) -> list[int] | None:
        sequences = self.budget.get(("sequences", model))
        if sequences is not None:
            return sequences.sequence(seq)
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
EAGER_BYTES = 256 * 2**20  # a model whose unit data fits and is smaller is loaded at start (~1 s)
DUCKDB_MEMORY_LIMIT = "512MB"  # DuckDB's buffer cache, beside the resident budget


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
