"""The memory budget of what a Store keeps from an index (ACTSCOPE_RESIDENT_MB).

Every part the store keeps in memory (a source's resident unit data, its unit table, a
model's sequences, its token-search table, its liveness) is admitted here under a key
with its size in bytes, and kept only if the budget has room. Two classes of parts:

- **kept** parts (tables, sequences, search, liveness) are small per unit and answer a
  whole page from one structure; admitting one may evict spare parts, least recently
  used first;
- **spare** parts (a source's unit data) are admitted only into free room and never
  evict anything: with random visits over more sources than fit, evicting one to load
  another would reload hundreds of MB per visit. A source that does not fit is read with
  SQL, unit by unit.

What is not admitted is built for the request that needs it and dropped after it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Part:
    value: Any
    nbytes: int
    spare: bool


class ResidentBudget:
    """Parts in memory by key, within `limit` bytes. Thread-safe."""

    def __init__(self, limit: int, on_evict: Callable[[Any], None] | None = None) -> None:
        self.limit = max(0, int(limit))
        self._on_evict = on_evict
        self._parts: OrderedDict[Any, Part] = OrderedDict()  # least recently used first
        self._used = 0
        self._lock = threading.Lock()

    @property
    def used(self) -> int:
        """Bytes held by the admitted parts."""
        return self._used

    def get(self, key: Any) -> Any:
        """The part's value (marked as just used), or None."""
        part = self._parts.get(key)
        if part is None:
            return None
        with self._lock:
            if key in self._parts:
                self._parts.move_to_end(key)
        return part.value

    def __contains__(self, key: Any) -> bool:
        return key in self._parts

    def keys(self) -> list[Any]:
        return list(self._parts)

    def room(self) -> int:
        """Free bytes."""
        return self.limit - self._used

    def could_admit(self, nbytes: int, spare: bool = False) -> bool:
        """Whether `admit` of that many bytes would succeed now."""
        free = self.limit - self._used
        if not spare:
            free += sum(p.nbytes for p in list(self._parts.values()) if p.spare)
        return nbytes <= free

    def admit(self, key: Any, value: Any, nbytes: int, spare: bool = False) -> bool:
        """Keep `value` under `key` if it fits: spare parts in free room only; kept parts
        also in room made by evicting spare parts, least recently used first."""
        nbytes = int(nbytes)
        evicted = []
        with self._lock:
            if key in self._parts:
                return True
            if nbytes > self.limit - self._used and not spare:
                spare_bytes = sum(p.nbytes for p in self._parts.values() if p.spare)
                if nbytes <= self.limit - self._used + spare_bytes:
                    for old in [k for k, p in self._parts.items() if p.spare]:
                        if nbytes <= self.limit - self._used:
                            break
                        self._used -= self._parts.pop(old).nbytes
                        evicted.append(old)
            fits = nbytes <= self.limit - self._used
            if fits:
                self._parts[key] = Part(value, nbytes, spare)
                self._used += nbytes
        for old in evicted:
            if self._on_evict is not None:
                self._on_evict(old)
        return fits

    def report(self) -> dict[str, Any]:
        """Limit, bytes used, and each part's key and size (for logs and benchmarks)."""
        return {
            "limit": self.limit,
            "used": self._used,
            "parts": [(repr(k), p.nbytes, p.spare) for k, p in list(self._parts.items())],
        }
