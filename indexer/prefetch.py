"""Produce the next items of an iterator in a background thread.

Reading and tokenising the corpus then overlaps with the forward passes; the tokenizer
releases the GIL while it works. When the consumer stops early, the producer is stopped
and joined before the generator returns, so the tokenizer is never used by two threads.

On Linux the producer runs at idle priority (SCHED_IDLE). The forward passes keep every
core busy with torch's worker threads; a producer that preempts one of them stalls the
others at the end of each parallel region, so tokenising at normal priority cost about
twice its own CPU time. At idle priority it runs when a core would otherwise wait (and
whenever the consumer is waiting for it): measured side by side on the benchmark's
corpus, the forward passes were slowed by half as much.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from queue import Empty, Full, Queue
from typing import TypeVar

T = TypeVar("T")
_DONE = object()


class _Failure:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _lower_own_priority() -> bool:
    """The calling thread (only) at idle priority, where the OS has it; True if it took."""
    set_policy = getattr(os, "sched_setscheduler", None)
    if set_policy is None or not hasattr(os, "SCHED_IDLE"):
        return False
    try:
        set_policy(0, os.SCHED_IDLE, os.sched_param(0))  # pid 0: this thread, on Linux
    except OSError:
        return False
    return True


def prefetch(items: Iterator[T], depth: int = 4) -> Iterator[T]:
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                queue.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        _lower_own_priority()
        try:
            for item in items:
                if not put(item):
                    return
        except BaseException as error:  # re-raised in the consuming thread
            put(_Failure(error))
        put(_DONE)

    thread = threading.Thread(target=produce, name="actscope-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                queue.get(timeout=0.1)
            except Empty:
                pass
        thread.join()
