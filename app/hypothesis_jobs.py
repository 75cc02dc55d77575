"""Hypothesis tests running in the background, and what they leave for the next one.

A test takes seconds (hundreds of sequences through the model), so a request starts it
and returns: the page shows its progress and asks again, the API awaits it. Each test
runs in a thread of its own that feeds the model worker one batch at a time through the
live queue (LiveService.run_task), so live requests keep their turn between batches.
At most `max_running` tests run at once; a test asked for while the same one runs
joins it. Finished results are kept by their key (unit, regex, sequences, seed,
threshold), and so are the unit's activations on each sequence it ran on and each
sequence's decoded text: another regex or threshold on the same unit needs no model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from actscope.app.errors import AppError, unavailable

FAILED_KEPT_S = 30.0  # a failed test's error is shown to the page polling it, then forgotten


class Job:
    """One test: its progress while it runs, then its result or its error."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.stage = "queued"  # what it is doing, in words for the page
        self.done = 0  # model batches run
        self.total = 0  # model batches to run (0 until known)
        self.result: dict[str, Any] | None = None
        self.error: AppError | None = None
        self.finished = threading.Event()
        self.finished_at = 0.0
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future]] = []
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return not self.finished.is_set()

    def progress(self, stage: str, done: int = 0, total: int = 0) -> None:
        self.stage, self.done, self.total = stage, done, total

    def finish(self, result: dict[str, Any] | None, error: AppError | None) -> None:
        self.result, self.error = result, error
        self.finished_at = time.monotonic()
        with self._lock:
            self.finished.set()
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_wake, future)

    async def wait(self, timeout_s: float) -> bool:
        """Wait (without a thread) until the test ends; False if `timeout_s` passed first."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        with self._lock:
            if self.finished.is_set():
                return True
            self._waiters.append((loop, future))
        try:
            await asyncio.wait_for(future, timeout_s)
        except asyncio.TimeoutError:
            return False
        return True


def _wake(future: asyncio.Future) -> None:
    if not future.done():
        future.set_result(None)


class LRU:
    """A small thread-safe least-recently-used map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)


class HypothesisJobs:
    def __init__(self, max_running: int = 2, results: int = 128, sequences: int = 16_384) -> None:
        self.max_running = max_running
        self._jobs: dict[Hashable, Job] = {}  # running, or failed a moment ago
        self._results = LRU(results)  # key -> result
        self.acts = LRU(sequences)  # (model, source, index, seq) -> float32 [ctx] activations
        self.decoded = LRU(sequences)  # (model, seq) -> regex_match.Decoded
        self._lock = threading.Lock()
        self.started = 0  # tests started (for tests and monitoring)

    def result(self, key: Hashable) -> dict[str, Any] | None:
        return self._results.get(key)

    def find(self, key: Hashable) -> Job | None:
        """The test of `key` if it runs, or failed less than FAILED_KEPT_S ago."""
        with self._lock:
            self._forget_failed()
            return self._jobs.get(key)

    def start(self, key: Hashable, work: Callable[[Job], dict[str, Any]], before: Callable[[], Callable[[], None]]):
        """The test of `key`: the one running, or a new one running work(job) in a thread
        (a failed one is tried again). `before()` runs in the caller first (e.g. reserving the client's budget; it may
        raise) and gives what to call when the test ends."""
        with self._lock:
            self._forget_failed()
            job = self._jobs.get(key)
            if job is not None and job.running:
                return job
            if sum(j.running for j in self._jobs.values()) >= self.max_running:
                raise unavailable(f"{self.max_running} hypothesis tests are running already; try again in a moment.")
            after = before()
            job = self._jobs[key] = Job(key)
            self.started += 1
        threading.Thread(target=self._run, args=(job, work, after), name="actscope-hypothesis", daemon=True).start()
        return job

    def _run(self, job: Job, work: Callable[[Job], dict[str, Any]], after: Callable[[], None]) -> None:
        result: dict[str, Any] | None = None
        error: AppError | None = None
        try:
            result = work(job)
        except AppError as exc:
            error = exc
        except Exception as exc:  # a bug: shown as such, the server goes on
            error = AppError(500, f"The hypothesis test failed: {type(exc).__name__}: {exc}"[:300])
        finally:
            after()
        with self._lock:
            if result is not None:
                self._results.put(job.key, result)
                self._jobs.pop(job.key, None)
        job.finish(result, error)

    def _forget_failed(self) -> None:
        now = time.monotonic()
        for key in [k for k, j in self._jobs.items() if not j.running and now - j.finished_at > FAILED_KEPT_S]:
            del self._jobs[key]
