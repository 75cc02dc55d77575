"""The models one server serves, from one or several index files.

Every model of every index file is served under its own name (its slug in URLs); two
files holding a model of the same name are refused, with both files named. Each model
has its own live service: its model is loaded on its first live request (or at start,
for the first model, with preload_live), so memory grows only for the models visitors
run.

Routes reach a model's store and live service through deps.StoreDep and deps.LiveDep
(from the `{model}` of the path) or `catalog.served(model)`; pages about every model
use `catalog.models()`, and cross-model work (neighbours) `catalog.stores()`.

A catalog belongs to one app. When index files are rebuilt in place, reload.py builds a
new app whose catalog opens only the changed files and carries the others over as they
are (store, live model, token table): each file is closed when the last catalog holding
it is.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

from actscope.app.errors import not_found
from actscope.app.example_json import CorpusJSON
from actscope.app.live_service import LiveService
from actscope.app.settings import Settings
from actscope.app.token_html import TokenTable
from actscope.indexer.errors import ActscopeError
from actscope.indexer.store.reader import ModelInfo, Store

Fingerprint = tuple[int, int, int, int]


def fingerprint(path: Path) -> Fingerprint:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(eq=False)
class IndexFile:
    """One index file, open read-only, and the catalogs serving it."""

    path: Path
    store: Store
    fingerprint: Fingerprint  # taken before it was opened: a change meanwhile is seen next poll
    holders: int = 0
    lives: list[LiveService] = field(default_factory=list)  # its models' live services, closed with it
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def hold(self) -> None:
        with self._lock:
            self.holders += 1

    def release(self) -> None:
        """Let go of the file; the last holder closes it."""
        with self._lock:
            self.holders -= 1
            last = self.holders == 0
        if last:
            for live in self.lives:
                live.close()
            self.store.close()


@dataclass(eq=False)
class ServedModel:
    """One model served: where its data is, and its live inference."""

    info: ModelInfo
    index: IndexFile
    live: LiveService
    tokens: TokenTable  # how the pages show its tokens
    corpus_json: CorpusJSON | None  # its corpus tokens as JSON for the API's example sets (None: not in the budget)

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def store(self) -> Store:
        return self.index.store


class Catalog:
    """The models of one app, by name, in the order of the files and of each file."""

    def __init__(self, files: list[IndexFile], models: list[ServedModel], opened: list[IndexFile]):
        self._files = files
        self._models = {m.model: m for m in models}
        self.opened = opened  # files this catalog opened itself (the others it carried over)
        self._closed = False
        for f in files:
            f.hold()

    def served(self, model: str) -> ServedModel:
        """The model named `model`; a 404 naming the models served if there is none."""
        found = self._models.get(model)
        if found is None:
            raise not_found(f"No model {model!r} on this server (it serves: {', '.join(self._models)}).")
        return found

    def store(self, model: str) -> Store:
        return self.served(model).store

    def live(self, model: str) -> LiveService:
        return self.served(model).live

    def models(self) -> list[ServedModel]:
        """Every model served, the first file's first."""
        return list(self._models.values())

    def stores(self) -> list[tuple[str, Store]]:
        """(model name, Store) of every model served, the first file's first: what
        cross-model work (e.g. neighbours in other models) iterates over. Models of one
        file share its Store; every Store method takes the model name, so pass it on."""
        return [(m.model, m.store) for m in self._models.values()]

    def files(self) -> list[IndexFile]:
        return list(self._files)

    def label(self, index: IndexFile) -> str:
        """How the pages name a file: its name, or its path below the folder all files
        share when two served files have one name (never the absolute path)."""
        names = [f.path.name for f in self._files]
        if names.count(index.path.name) == 1:
            return index.path.name
        common = Path(os.path.commonpath([f.path.resolve() for f in self._files]))
        return index.path.resolve().relative_to(common).as_posix()

    def file_of(self, model: str) -> IndexFile:
        return self.served(model).index

    def close(self) -> None:
        """Let go of every file (each is closed once no other catalog holds it)."""
        if not self._closed:
            self._closed = True
            for f in self._files:
                f.release()


def open_catalog(settings: Settings, previous: Catalog | None = None, changed: Collection[Path] = ()) -> Catalog:
    """The catalog of `settings.index_file`: each file opened read-only (schema version
    checked), except the files of `previous` not in `changed`, which are carried over
    with their models as they are. ActscopeError for a file that cannot be served, or
    for two files holding a model of the same name."""
    changed = set(changed)
    kept = {f.path: f for f in (previous.files() if previous else []) if f.path not in changed}
    kept_models = previous.models() if previous else []
    files: list[IndexFile] = []
    opened: list[IndexFile] = []
    models: list[ServedModel] = []
    try:
        for path in settings.index_file:
            if path in kept:
                files.append(kept[path])
                models.extend(m for m in kept_models if m.index is kept[path])
                continue
            index = _open_file(path, settings.resident_mb)
            files.append(index)
            opened.append(index)
            models.extend(_serve_models(index, settings))
        _check_names(models)
    except BaseException:
        for index in opened:
            index.store.close()
        raise
    return Catalog(files, models, opened)


def _open_file(path: Path, resident_mb: float) -> IndexFile:
    try:
        before = fingerprint(path)
    except OSError:  # Store says what is wrong with the path
        before = (0, 0, 0, 0)
    store = Store(path, resident_mb=resident_mb)
    if not store.models():
        store.close()
        raise ActscopeError(f"{path}: the index holds no model")
    return IndexFile(path, store, before)


def _serve_models(index: IndexFile, settings: Settings) -> list[ServedModel]:
    store = index.store
    served = [
        ServedModel(
            info,
            index,
            _live_service(store, info, settings),
            TokenTable(store.vocab_bytes(info.model)),
            CorpusJSON.build(store, info.model),
        )
        for info in store.models()
    ]
    index.lives.extend(m.live for m in served)
    return served


def _live_service(store: Store, info: ModelInfo, settings: Settings) -> LiveService:
    model = info.model
    return LiveService(
        info,
        store.sources(model),
        device=settings.device,
        max_waiting=settings.live_max_waiting,
        timeout_s=settings.live_timeout_s,
        max_chars=settings.max_text_chars,
        cache_size=settings.live_cache_size,
        enabled=settings.live,
        max_batch=settings.live_max_batch,
        threads=settings.live_threads,
        token_strings=lambda ids: store.token_strings(model, ids),
        unit_vectors=lambda slug: store.unit_vectors(model, slug),
    )


def same_name(name: str, first: Path, second: Path) -> ActscopeError:
    return ActscopeError(
        f"two index files hold a model named {name!r}: {first} and {second}. Each model is served under its"
        " own name: index one of them again with `actscope index --name`, or serve them from two servers"
    )


def _check_names(models: list[ServedModel]) -> None:
    seen: dict[str, ServedModel] = {}
    for m in models:
        other = seen.setdefault(m.model, m)
        if other is not m:
            raise same_name(m.model, other.index.path, m.index.path)


def check_files(paths: list[Path]) -> list[tuple[Path, list[str]]]:
    """Open every index file of `paths` and read all of it (Store.verify), and check
    that no two hold a model of the same name: (file, its models) of each, or the first
    problem as one ActscopeError. For `actscope serve` to fail in one line at start."""
    seen: dict[str, Path] = {}
    out = []
    for path in paths:
        store = Store(path, resident_mb=0)
        try:
            store.verify()
            names = [m.model for m in store.models()]
        finally:
            store.close()
        if not names:
            raise ActscopeError(f"{path}: the index holds no model")
        for name in names:
            if name in seen:
                raise same_name(name, seen[name], path)
            seen[name] = path
        out.append((path, names))
    return out
