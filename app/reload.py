"""Serving index files that are rebuilt in place.

`actscope index` writes a temporary file and renames it over --out, so the path always
names a complete index, and a server that opened the old file goes on reading it (its
inode stays alive while open). `ReloadingApp` serves the app of its index files and
swaps in an app that serves the files the paths name now: on SIGHUP (single-process
serving), or when a file at one of the paths changes (`--reload-on-change`: each worker
process polls them). Only the changed files are opened again: the new app carries the
others over (catalog.py), with their live models and cached pages. The new app is
built and checked beside the old one; new requests then go to it, requests already
running finish on the old one, and an old file is closed after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from actscope.app.catalog import Catalog, Fingerprint, fingerprint
from actscope.app.settings import Settings

log = logging.getLogger("actscope.app")


@dataclass
class Served:
    """One app over its files, with the requests it is serving."""

    app: FastAPI
    in_flight: int = 0
    retired: bool = False
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _closed: bool = False

    async def start(self) -> None:
        """Run the app's lifespan start-up (e.g. the live model's preload)."""
        await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))

    async def close(self) -> None:
        """Run the app's lifespan shutdown: it lets go of its index files."""
        if not self._closed:
            self._closed = True
            await self._stack.aclose()


class ReloadingApp:
    """An ASGI app that forwards each request to the app of the current index files.

    `build(settings)` builds the first app; `build(settings, reload_of=app,
    changed=paths)` one that opens `paths` again and carries over the other files of
    `app` (server.create_app)."""

    def __init__(self, settings: Settings, build: Callable[..., FastAPI], sighup: bool = False) -> None:
        self.settings = settings
        self._build = build
        self.sighup = sighup
        self.current = Served(build(settings))
        self.reloads = 0
        self._failed: dict[Path, Fingerprint] = {}  # not tried again until the file changes again
        self._lock: asyncio.Lock | None = None
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        served = self.current
        served.in_flight += 1
        try:
            await served.app(scope, receive, send)
        finally:
            served.in_flight -= 1
            if served.retired and served.in_flight == 0:
                await served.close()

    @property
    def catalog(self) -> Catalog:
        return self.current.app.state.catalog

    def _changed(self) -> list[Path]:
        """The served files whose path names another file now (or the same, rewritten)."""
        out = []
        for f in self.catalog.files():
            try:
                if fingerprint(f.path) != f.fingerprint:
                    out.append(f.path)
            except OSError:  # between an unlink and a rename, or gone: keep serving it
                continue
        return out

    async def reload(self, why: str, paths: list[Path] | None = None) -> bool:
        """Serve the files `paths` name now (None: every file that changed), if they
        open and read whole; else keep serving the files open and say why. True if the
        app was swapped."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            paths = self._changed() if paths is None else paths
            if not paths:
                log.warning("actscope: %s, but no index file changed: kept serving the files open", why)
                return False
            try:
                before = {path: fingerprint(path) for path in paths}
            except OSError as exc:
                log.warning("actscope: %s, but kept serving the index it had open: %s", why, exc)
                return False
            try:
                app = await run_in_threadpool(self._build_checked, paths)
            except Exception as exc:  # ActscopeError says what is wrong with the file; anything else too
                self._failed.update(before)
                log.warning("actscope: %s, but kept serving the index it had open: %s", why, exc)
                return False
            fresh = Served(app)
            await fresh.start()
            old, self.current = self.current, fresh
            old.retired = True
            if old.in_flight == 0:
                await old.close()
            self.reloads += 1
            for path in paths:
                self._failed.pop(path, None)
            log.warning("actscope: %s: now serving the index at %s", why, ", ".join(map(str, paths)))
            return True

    def _build_checked(self, paths: list[Path]) -> FastAPI:
        app = self._build(self.settings, reload_of=self.current.app, changed=paths)
        catalog: Catalog = app.state.catalog
        try:
            for f in catalog.opened:
                f.store.verify()  # a damaged file is refused before it serves anything
        except BaseException:
            catalog.close()
            raise
        return app

    async def _watch(self, interval: float) -> None:
        """Poll the files; reload those whose change has held still for one more poll (a
        file copied into place rather than renamed may still be growing)."""
        pending: dict[Path, Fingerprint] = {}
        while True:
            await asyncio.sleep(interval)
            ready = []
            for f in self.catalog.files():
                try:
                    now = fingerprint(f.path)
                except OSError:  # between an unlink and a rename, or gone: keep serving
                    continue
                if now in (f.fingerprint, self._failed.get(f.path)):
                    pending.pop(f.path, None)
                elif now != pending.get(f.path):
                    pending[f.path] = now
                else:
                    del pending[f.path]
                    ready.append(f.path)
            if ready:
                await self.reload("the index file changed", ready)

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.current.start()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.settings.reload_on_change:
                    self._spawn(self._watch(self.settings.reload_interval_s))
                if self.sighup and threading.current_thread() is threading.main_thread():
                    loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self.reload("SIGHUP received")))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.sighup and threading.current_thread() is threading.main_thread():
                    loop.remove_signal_handler(signal.SIGHUP)
                for task in list(self._tasks):
                    task.cancel()
                await self.current.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
