"""The parts of a unit page beyond the stored record: band names, which units are dead
and their live neighbours, the page of an example set, the expanded example."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from actscope.app import params
from actscope.app.errors import AppError
from actscope.app.live_service import LiveService
from actscope.indexer.store.reader import Liveness


def _percent(level: float) -> str:
    # 0.999 -> "99.9", 0.95 -> "95", 1 - 0.999 -> "0.1" (rounding off float noise)
    return f"{round(level * 100, 3):g}"


@lru_cache(maxsize=256)
def band_name(q_lo: float, q_hi: float) -> str:
    """A band by its quantile range: "top 1%", "90–95%", "bottom 50%"."""
    if q_lo <= 0 and q_hi >= 1:
        return "all"
    if q_hi >= 1:
        return f"top {_percent(1 - q_lo)}%"
    if q_lo <= 0:
        return f"bottom {_percent(q_hi)}%"
    return f"{_percent(q_lo)}\u2013{_percent(q_hi)}%"


def basis_words(band_basis: str) -> str:
    """What a source's band quantiles are quantiles of."""
    return "of active tokens" if band_basis == "firing" else "of tokens"


def neighbours(fired: np.ndarray, index: int, n_units: int) -> tuple[int, int]:
    """The previous and next unit that ever fired, around `index` (wrapping); every
    unit's neighbours by one when none fired."""
    if len(fired) == 0:
        return (index - 1) % n_units, (index + 1) % n_units
    i = int(np.searchsorted(fired, index, "left"))  # fired[i] >= index
    j = int(np.searchsorted(fired, index, "right"))  # fired[j] > index
    prev = int(fired[i - 1]) if i > 0 else int(fired[-1])
    nxt = int(fired[j]) if j < len(fired) else int(fired[0])
    return prev, nxt


def random_unit(liveness: Liveness, n_units: int, dead: bool, rng) -> int | None:
    """A random unit that fired (or, with `dead`, one that never did); None if there is
    none such. Every unit when none fired and dead ones are not asked for."""
    pool = liveness.dead if dead else liveness.fired
    if len(pool):
        return int(pool[rng.randrange(len(pool))])
    return None if dead or n_units == 0 else rng.randrange(n_units)


def example_page(stored: int, page: int, per_page: int, what: str) -> dict[str, Any]:
    """Which slice of an example set of `stored` examples page `page` shows."""
    n_pages = max(1, -(-stored // per_page))
    params.check_example_page(page, n_pages, what)
    first = (page - 1) * per_page
    return {
        "page": page,
        "per_page": per_page,
        "n_pages": n_pages,
        "stored": stored,
        "first": first,
        "count": max(0, min(per_page, stored - first)),
    }


def scale_of(stats) -> float:
    """The activation a unit's tints are full at: its largest magnitude on the corpus."""
    return max(abs(stats.max), abs(stats.min), 1e-9)


def tint_sequence(live: LiveService, source: str, index: int, data: dict[str, Any], scale: float) -> dict[str, Any]:
    """A corpus sequence's data (pages.sequence_data) tinted by one unit: its
    activations, computed live on the exact tokens (`acts`; None when live inference
    failed, with `live_error`), and `scale`. The caller has checked the source and unit."""
    data.update(acts=None, scale=scale, live_error=None)
    try:
        res = live.run_ids(data["token_ids"], source)
        data["acts"] = [None if a != a else float(a) for a in res.acts[:, index]]  # NaN: not measured
    except AppError as exc:
        data["live_error"] = exc.message
    return data
