"""Where a run's time goes outside its batches: wall time per named phase.

At a hundred thousand units the fixed costs (loading, calibration, the logit tables, the
file's last writes) can take as long as a short corpus; the run's log and its meta table
say which phase took what.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class PhaseClock:
    """Seconds per phase, in the order the phases first ran (a phase may run several times:
    its times add up)."""

    def __init__(self, started: float | None = None) -> None:
        """`started`: the run's start (time.perf_counter()), if before now."""
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter() if started is None else started

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def rounded(self) -> dict[str, float]:
        return {name: round(seconds, 2) for name, seconds in self.seconds.items()}

    def summary(self, names: list[str]) -> str:
        """'a 1.2 s, b 0.3 s' for the phases in `names` that ran."""
        return ", ".join(f"{name} {self.seconds[name]:.1f} s" for name in names if name in self.seconds)
