"""Live inference for visitors' text: one model, serialised, bounded, cached.

The model (indexer.live.LiveModel) is not thread-safe, so one worker thread owns it.
Requests queue for it; the worker takes up to `max_batch` queued requests for the same
source and runs them in one forward pass (right-padded: attention is causal, so the
results are those of separate runs). At most `max_waiting` requests may wait; more are
refused at once (503), and a request not served within `timeout_s` is refused too, so
a burst of live requests never makes the rest of the server unresponsive.
"""

from __future__ import annotations

import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from actscope.app import limits
from actscope.app.errors import AppError, bad_input, unavailable
from actscope.indexer.errors import ActscopeError
from actscope.indexer.store.reader import ModelInfo, SourceInfo

if TYPE_CHECKING:  # the live model imports torch: only when it is loaded
    from actscope.app.live import LiveModel


@dataclass(frozen=True)
class LiveResult:
    """Activations of one source on one text. acts: float32 [n_tokens, n_units]."""

    text: str
    token_ids: list[int]
    tokens: list[str]
    acts: np.ndarray
    truncated: bool  # the text was longer than the model's context (or max_text_chars)


def clean_text(text: str | None, max_chars: int) -> tuple[str, bool]:
    """Validate visitor text: empty/whitespace is an error; very long text is cut."""
    if text is None or not text.strip():
        raise bad_input("Text is empty: type some text to run the model on.")
    if len(text) > max_chars:
        return text[:max_chars], True
    return text, False


class LiveService:
    def __init__(
        self,
        model: ModelInfo,
        sources: list[SourceInfo],
        device: str = "cpu",
        max_waiting: int = 64,
        timeout_s: float = 20.0,
        max_chars: int = 20_000,
        cache_size: int = 256,
        enabled: bool = True,
        max_batch: int = 8,
        threads: int | None = None,
        token_strings: Callable[[list[int]], list[str]] | None = None,
        unit_vectors: Callable[[str], object] | None = None,
    ):
        self.model = model
        self.sources = {s.slug: s for s in sources}
        self.device = device
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self._live: LiveModel | None = None
        self._load_error: str | None = None
        self._load_lock = threading.Lock()
        self._queue: deque[_Job] = deque()
        self._queue_cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False  # a reload replaced this service: its worker ends, its model is let go
        self.max_batch = max_batch
        self.threads = threads
        # ids -> strings from the index's vocab table (same decoding, ~5x cheaper than
        # the tokenizer's batch_decode, and off the model worker's critical path).
        self.token_strings = token_strings
        self.unit_vectors = unit_vectors  # slug -> the vectors the index stores for its units (random directions)
        self.forward_passes = 0  # batches run by the worker (for tests and monitoring)
        self._waiting = threading.BoundedSemaphore(max_waiting)
        # ("text", text, source) or ("ids", token ids, source) -> result;
        # ("attention", hook, token ids) -> attention rows
        self._cache: OrderedDict[tuple, Any] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------
    def load(self) -> LiveModel:
        """Load the model once (lazily); raise 503 if it cannot be loaded."""
        if not self.enabled:
            raise unavailable("Live inference is switched off on this server.")
        if self._closed:
            raise unavailable("This index was reloaded; try again.")
        if self._live is not None:
            return self._live
        with self._load_lock:
            if self._live is None and self._load_error is None:
                try:
                    from actscope.app.live import load_live

                    if self.threads:
                        import torch

                        torch.set_num_threads(self.threads)

                    self._live = load_live(
                        dict(self.model.row),
                        [dict(s.row) for s in self.sources.values()],
                        device=self.device,
                        unit_vectors=self.unit_vectors,
                    )
                except Exception as exc:  # whatever the cause, live routes answer 503 with it, pages go on
                    self._load_error = (
                        str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                    )
        if self._live is None:
            raise unavailable(f"Live inference is unavailable: {self._load_error}")
        return self._live

    @property
    def loaded(self) -> bool:
        return self._live is not None

    # -- running -----------------------------------------------------------------------
    def run(self, text: str | None, source: str) -> LiveResult:
        """Tokenize `text` (BOS first, at most ctx tokens) and run the model on it."""
        text, cut = clean_text(text, self.max_chars)
        return self._run(("text", text, source), source, text=text, cut=cut)

    async def arun(self, text: str | None, source: str) -> LiveResult:
        """`run` for async routes: waits for the worker without holding a thread."""
        text, cut = clean_text(text, self.max_chars)
        key = ("text", text, source)
        if source not in self.sources:
            raise bad_input(f"Unknown source {source!r}: expected one of {', '.join(sorted(self.sources))}.")
        with self._cache_lock:
            hit = self._cache.get(key)
        if hit is not None:
            return hit
        if self._live is None:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(self.load)
        # The client's budget pays for a run (a full context reserved, what ran charged).
        reservation = limits.reserve_live(self.model.ctx)
        job = _Job(source, text, None)
        try:
            result = await self._await_job(job, key, cut)
        finally:
            reservation.settle(len(job.ids or ()) if job.acts is not None else 0)
        return result

    async def atask(self, key: tuple, tokens: int, task: Callable[[LiveModel], Any]) -> Any:
        """Run `task` on the live model in the worker, alone, bounded like every live run
        (queued, timed out) and cached under `key`; the client's budget pays `tokens`."""
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        if self._live is None:
            from starlette.concurrency import run_in_threadpool

            await run_in_threadpool(self.load)
        reservation = limits.reserve_live(tokens)
        job = _Job("", "", None)
        job.task = task
        try:
            await self._await_done(job)
        finally:
            reservation.settle(tokens if job.error is None and job.done.is_set() else 0)
        if job.error is not None:
            raise job.error
        with self._cache_lock:
            self._cache[key] = job.result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return job.result

    async def _await_job(self, job: _Job, key: tuple, cut: bool) -> LiveResult:
        await self._await_done(job)
        return self._finish(job, key, cut)

    async def _await_done(self, job: _Job) -> None:
        import asyncio

        if not self._waiting.acquire(blocking=False):
            raise unavailable("The server is busy with other live requests; try again in a moment.")
        try:
            loop = asyncio.get_running_loop()
            future = loop.create_future()

            def wake() -> None:
                if not future.done():
                    future.set_result(None)

            job.notify = lambda: loop.call_soon_threadsafe(wake)
            self._submit(job)
            try:
                await asyncio.wait_for(future, self.timeout_s)
            except asyncio.TimeoutError:
                job.cancelled = True
                raise unavailable("Timed out waiting for the model; try again in a moment.") from None
        finally:
            self._waiting.release()

    def run_ids(self, token_ids: list[int], source: str) -> LiveResult:
        """Run the model on exact token ids (e.g. a stored corpus sequence)."""
        ids = tuple(int(i) for i in token_ids)
        return self._run(("ids", ids, source), source, ids=list(ids))

    def attention(self, hook: str, prefixes: list[list[int]]) -> list[np.ndarray]:
        """Each token prefix's attention row at its last position, every head, at `hook`
        (an attention pattern hook): [n_heads, len(prefix)] float32 each. Cached per
        prefix; the rest in one job of the worker, bounded like every live request."""
        keys = [("attention", hook, tuple(int(i) for i in ids)) for ids in prefixes]
        found: dict[tuple, np.ndarray] = {}
        with self._cache_lock:
            for key in keys:
                hit = self._cache.get(key)
                if hit is not None:
                    self._cache.move_to_end(key)
                    found[key] = hit
        missing = list(dict.fromkeys(key for key in keys if key not in found))
        if missing:
            rows = self.run_task(lambda live: live.attention_rows(hook, [list(key[2]) for key in missing]))
            with self._cache_lock:
                for key, row in zip(missing, rows):
                    found[key] = self._cache[key] = row
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        return [found[key] for key in keys]

    def run_task(self, task: Callable[[LiveModel], Any]) -> Any:
        """task(live model), run alone by the worker, queued and timed out like every live
        request (e.g. one batch of a hypothesis test's forward passes); what it returns."""
        self.load()
        if not self._waiting.acquire(blocking=False):
            raise unavailable("The server is busy with other live requests; try again in a moment.")
        try:
            job = _Job("", "", None)
            job.task = task
            self._submit(job)
            if not job.done.wait(self.timeout_s):
                job.cancelled = True
                raise unavailable("Timed out waiting for the model; try again in a moment.")
        finally:
            self._waiting.release()
        if job.error is not None:
            raise job.error
        return job.result

    def _run(
        self, key: tuple, source: str, text: str = "", cut: bool = False, ids: list[int] | None = None
    ) -> LiveResult:
        if source not in self.sources:
            raise bad_input(f"Unknown source {source!r}: expected one of {', '.join(sorted(self.sources))}.")
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        self.load()
        reservation = limits.reserve_live(len(ids) if ids is not None else self.model.ctx)
        job = _Job(source, text, ids)
        try:
            if not self._waiting.acquire(blocking=False):
                raise unavailable("The server is busy with other live requests; try again in a moment.")
            try:
                self._submit(job)
                if not job.done.wait(self.timeout_s):
                    job.cancelled = True
                    raise unavailable("Timed out waiting for the model; try again in a moment.")
            finally:
                self._waiting.release()
            return self._finish(job, key, cut)
        finally:
            reservation.settle(len(job.ids or ()) if job.acts is not None else 0)

    def _finish(self, job: _Job, key: tuple, cut: bool) -> LiveResult:
        if job.error is not None:
            raise job.error
        if job.ids is None or job.acts is None:  # the worker always sets them or an error
            raise AppError(500, "Live inference returned no result.")
        result = LiveResult(job.text, job.ids, job.tokens, job.acts, bool(job.truncated or cut))
        with self._cache_lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result

    # -- the model worker: one thread, requests batched per source ----------------------
    def close(self) -> None:
        """Let go of the model once the queue is empty: the index was reloaded and no
        request uses this service any more (its worker thread ends too)."""
        with self._queue_cond:
            self._closed = True
            self._queue_cond.notify_all()
            if self._worker is None:
                self._live = None

    def _submit(self, job: _Job) -> None:
        with self._queue_cond:
            if self._closed:
                raise unavailable("This index was reloaded; try again.")
            self._queue.append(job)
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="actscope-live", daemon=True)
                self._worker.start()
            self._queue_cond.notify()

    def _work(self) -> None:
        while True:
            with self._queue_cond:
                while not self._queue:
                    if self._closed:
                        self._live, self._worker = None, None
                        return
                    self._queue_cond.wait()
                first = self._queue.popleft()
                batch = [first]
                rest: deque[_Job] = deque()
                while self._queue and len(batch) < self.max_batch and first.task is None:
                    job = self._queue.popleft()
                    (batch if job.source == first.source and job.task is None else rest).append(job)
                self._queue.extendleft(reversed(rest))
            batch = [job for job in batch if not job.cancelled]
            if batch:
                self._run_batch(batch)

    def _run_batch(self, batch: list[_Job]) -> None:
        live = self._live
        try:
            if live is None:  # jobs are submitted after load() only
                raise RuntimeError("the live model is not loaded")
            if batch[0].task is not None:  # a job of its own (e.g. attention rows)
                self.forward_passes += 1
                batch[0].result = batch[0].task(live)
                return
            untokenized = [job for job in batch if job.ids is None]
            encoded = iter(live.tokenize_batch([job.text for job in untokenized]) if untokenized else ())
            ids: list[list[int]] = []
            for job in batch:
                if job.ids is None:
                    job.ids, job.truncated = next(encoded)
                job.ids = [int(i) for i in job.ids]
                ids.append(job.ids)
            source = batch[0].source
            self.forward_passes += 1
            if len(batch) > 1 and hasattr(live, "activations_batch"):
                outs = live.activations_batch(ids, source)
            else:
                outs = [live.activations(job_ids, source) for job_ids in ids]
            for job, job_ids, acts in zip(batch, ids, outs):
                job.acts = np.asarray(acts, dtype=np.float32)
                job.tokens = list(self.token_strings(job_ids) if self.token_strings else live.token_strings(job_ids))
        except ActscopeError as exc:
            for job in batch:
                job.error = bad_input(str(exc))
        except Exception as exc:  # a bug: report it per request, keep the worker alive
            for job in batch:
                job.error = AppError(500, f"Live inference failed: {type(exc).__name__}: {exc}"[:300])
        finally:
            for job in batch:
                job.done.set()
                if job.notify is not None:
                    job.notify()


class _Job:
    """One live request waiting for the worker."""

    __slots__ = (
        "source",
        "text",
        "ids",
        "truncated",
        "acts",
        "tokens",
        "error",
        "done",
        "cancelled",
        "notify",
        "task",
        "result",
    )

    def __init__(self, source: str, text: str, ids: list[int] | None):
        self.source = source
        self.text = text
        self.ids = ids
        self.truncated = False
        self.acts: np.ndarray | None = None  # float32 [n_tokens, n_units]
        self.tokens: list[str] = []
        self.error: Exception | None = None
        self.done = threading.Event()
        self.cancelled = False
        self.notify: Callable[[], object] | None = None  # called by the worker when done (async waiters)
        self.task: Callable[[LiveModel], Any] | None = None  # run alone on the live model instead
        self.result: Any = None  # what `task` returned
