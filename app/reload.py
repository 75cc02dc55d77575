"""Serving an index that is rebuilt in place.

`actscope index` writes a temporary file and renames it over --out, so the path always
names a complete index, and a server that opened the old file goes on reading it (its
inode stays alive while open). `ReloadingApp` serves the app of one file and swaps in
the app of the file the path names now: on SIGHUP (single-process serving), or when
the file at the path changes (`--reload-on-change`: each worker process polls it). The
new app is built and checked beside the old one; new requests then go to it, requests
already running finish on the old one, and the old file is closed after the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from actscope.app.settings import Settings

log = logging.getLogger("actscope.app")


def fingerprint(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is replaced or rewritten: device, inode, size, mtime."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass
class Served:
    """One app over one file, with the requests it is serving."""

    app: FastAPI
    fingerprint: tuple[int, int, int, int]
    in_flight: int = 0
    retired: bool = False
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)
    _closed: bool = False

    async def start(self) -> None:
        """Run the app's lifespan start-up (e.g. the live model's preload)."""
        await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))

    async def close(self) -> None:
        """Run the app's lifespan shutdown: it closes the index file."""
        if not self._closed:
            self._closed = True
            await self._stack.aclose()


class ReloadingApp:
    """An ASGI app that forwards each request to the app of the current index file."""

    def __init__(self, settings: Settings, build: Callable[[Settings], FastAPI], sighup: bool = False) -> None:
        self.settings = settings
        self.path = Path(settings.index_file)
        self._build = build
        self.sighup = sighup
        before = fingerprint(self.path)  # taken before opening: a change meanwhile is seen next poll
        self.current = Served(build(settings), before)
        self.reloads = 0
        self._failed: tuple[int, int, int, int] | None = None
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

    async def reload(self, why: str) -> bool:
        """Serve the file the path names now, if it opens and reads whole; else keep the
        current one and say why. True if the app was swapped."""
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                before = fingerprint(self.path)
            except OSError as exc:
                log.warning("actscope: %s, but kept serving the index it had open: %s", why, exc)
                return False
            try:
                app = await run_in_threadpool(self._build_checked)
            except Exception as exc:  # ActscopeError says what is wrong with the file; anything else too
                self._failed = before  # not tried again until the file changes again
                log.warning("actscope: %s, but kept serving the index it had open: %s", why, exc)
                return False
            fresh = Served(app, before)
            await fresh.start()
            old, self.current = self.current, fresh
            old.retired = True
            if old.in_flight == 0:
                await old.close()
            self.reloads += 1
            self._failed = None
            log.warning("actscope: %s: now serving the index at %s", why, self.path)
            return True

    def _build_checked(self) -> FastAPI:
        app = self._build(self.settings)
        try:
            app.state.store.verify()  # a damaged file is refused before it serves anything
        except BaseException:
            app.state.store.close()
            raise
        return app

    async def _watch(self, interval: float) -> None:
        """Poll the file; reload once a change has held still for one more poll (a file
        copied into place rather than renamed may still be growing)."""
        pending = None
        while True:
            await asyncio.sleep(interval)
            try:
                now = fingerprint(self.path)
            except OSError:  # between an unlink and a rename, or gone: keep serving
                continue
            if now in (self.current.fingerprint, self._failed):
                pending = None
            elif now != pending:
                pending = now
            else:
                pending = None
                await self.reload("the index file changed")

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
