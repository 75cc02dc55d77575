"""Loading sources' unit data into memory in the background, one at a time.

A source of 65,536 units takes a second or more to load; the request that first visits
it is answered with SQL meanwhile, and so are the others until it is in memory. Each
source is asked for once: one that did not fit is not tried again (the budget's free
room only shrinks), one evicted later is tried again on its next visit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("actscope.store")


class SourceLoader:
    """Runs `load(model, source) -> bool` (True: now in memory) for each source asked for
    (source None: a part of the model's own, e.g. its token search lookup)."""

    def __init__(self, load: Callable[[str, str | None], bool]) -> None:
        self._load = load
        self._queue: list[tuple[str, str | None]] = []
        self._tried: set[tuple[str, str | None]] = set()  # asked for and not (or no longer) to be loaded again
        self._done = threading.Condition()
        self._stopped = False
        self._running = False  # a loader thread is on it (set and cleared under the lock)

    def request(self, model: str, source: str | None) -> None:
        key = (model, source)
        if key in self._tried or self._stopped:
            return
        with self._done:
            if key in self._tried or self._stopped:
                return
            self._tried.add(key)
            self._queue.append(key)
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="actscope-source-loader", daemon=True).start()

    def stop(self) -> None:
        """Load nothing more (what is loading now finishes)."""
        with self._done:
            self._queue.clear()
            self._stopped = True

    def forget(self, model: str, source: str) -> None:
        """Allow loading the source again (its data was evicted)."""
        self._tried.discard((model, source))

    def _run(self) -> None:
        while True:
            with self._done:
                if not self._queue:
                    self._running = False
                    self._done.notify_all()
                    return
                model, source = self._queue.pop(0)
            try:
                self._load(model, source)
            except Exception as exc:  # a failed load leaves the source to SQL
                if not self._stopped:  # else interrupted by close(): nothing to say
                    log.warning("could not load %s/%s into memory: %s", model, source, exc)

    def wait(self, timeout: float | None = None) -> None:
        """Until the queue is empty and nothing is loading."""
        with self._done:
            self._done.wait_for(lambda: not self._running, timeout)
