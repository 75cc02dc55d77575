"""Live inference for visitors' text: one model, serialised, bounded, cached.

The model (indexer.live.LiveModel) is not thread-safe, so calls are serialised by a
lock. At most `max_waiting` requests may wait for it; more are refused at once (503),
and a request that cannot start within `timeout_s` is refused too, so a burst of live
requests never makes the rest of the server unresponsive.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from indexer.errors import ActscopeError
from indexer.store_reader import ModelInfo, SourceInfo

from .errors import bad_input, unavailable


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
    def __init__(self, model: ModelInfo, sources: list[SourceInfo], device: str = "cpu",
                 max_waiting: int = 64, timeout_s: float = 20.0, max_chars: int = 20_000,
                 cache_size: int = 256, enabled: bool = True):
        self.model = model
        self.sources = {s.slug: s for s in sources}
        self.device = device
        self.enabled = enabled
        self.timeout_s = timeout_s
        self.max_chars = max_chars
        self._live = None
        self._load_error: str | None = None
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._waiting = threading.BoundedSemaphore(max_waiting)
        self._cache: OrderedDict[tuple[str, str], LiveResult] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()

    # -- loading -----------------------------------------------------------------------
    def load(self):
        """Load the model once (lazily); raise 503 if it cannot be loaded."""
        if not self.enabled:
            raise unavailable("Live inference is switched off on this server.")
        if self._live is not None:
            return self._live
        with self._load_lock:
            if self._live is None and self._load_error is None:
                try:
                    from indexer.live import load_live

                    self._live = load_live(
                        dict(self.model.row), [dict(s.row) for s in self.sources.values()],
                        device=self.device,
                    )
                except (ActscopeError, ImportError, OSError, ValueError, RuntimeError) as exc:
                    self._load_error = str(exc).strip().splitlines()[0][:300] if str(exc).strip() \
                        else type(exc).__name__
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

    def run_ids(self, token_ids: list[int], source: str) -> LiveResult:
        """Run the model on exact token ids (e.g. a stored corpus sequence)."""
        ids = tuple(int(i) for i in token_ids)
        return self._run(("ids", ids, source), source, ids=list(ids))

    def _run(self, key: tuple, source: str, text: str = "", cut: bool = False,
             ids: list[int] | None = None) -> LiveResult:
        if source not in self.sources:
            raise bad_input(f"Unknown source {source!r}: expected one of {', '.join(sorted(self.sources))}.")
        with self._cache_lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        live = self.load()
        if not self._waiting.acquire(blocking=False):
            raise unavailable("The server is busy with other live requests; try again in a moment.")
        try:
            if not self._run_lock.acquire(timeout=self.timeout_s):
                raise unavailable("Timed out waiting for the model; try again in a moment.")
            try:
                truncated = False
                if ids is None:
                    ids, truncated = live.tokenize(text)
                acts = np.asarray(live.activations(ids, source), dtype=np.float32)
                tokens = list(live.token_strings(ids))
            finally:
                self._run_lock.release()
        finally:
            self._waiting.release()
        result = LiveResult(text, [int(i) for i in ids], tokens, acts, bool(truncated or cut))
        with self._cache_lock:
            self._cache[key] = result
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return result
