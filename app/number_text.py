"""Many numbers as "%.Nf" writes them, at once: a unit page's activations (600 of them),
without a % format per number.

Each value v is scaled to an integer count of its last digit, rint(v * 10^N), and its
text picked from two tables: the sign and whole part with the point ("-12."), and the
N decimals ("0345"). This is the string "%.Nf" writes whenever the scaled value rounds
as v itself does: always for a float32 value (the product is exact in a float64, so
rint rounds half to even as "%.Nf" does), and for any value whose product is not within
1e-6 of a tie. Other values, and any of 999 or more in magnitude, NaN or inf, are
formatted one by one.
"""

from __future__ import annotations

from functools import lru_cache
from operator import add

import numpy as np

WHOLE_LIMIT = 1000  # whole parts in the table (of either sign)
_TIE_MARGIN = 1e-6


@lru_cache(maxsize=8)
def _tables(digits: int) -> tuple[np.ndarray, np.ndarray]:
    wholes = [f"{i}." for i in range(WHOLE_LIMIT)] + [f"-{i}." for i in range(WHOLE_LIMIT)]
    decimals = [f"{i:0{digits}d}" for i in range(10**digits)]
    return np.array(wholes, dtype=object), np.array(decimals, dtype=object)


def fixed(values: np.ndarray, digits: int) -> list[str]:
    """[f"%.{digits}f" % v for v in values] for a float64 array, the same strings (digits
    from 1 to 4)."""
    if not len(values):
        return []
    magnitude = np.abs(values)
    if not (magnitude.max() < WHOLE_LIMIT - 1):  # NaN, inf, or a value that may round past the tables
        return _one_by_one(values, digits)
    scaled = magnitude * 10**digits
    # An inexact product near a tie may round the other way.
    if not (
        (values.astype(np.float32) == values).all() or (np.abs(scaled - np.floor(scaled) - 0.5) > _TIE_MARGIN).all()
    ):
        return _one_by_one(values, digits)
    wholes, decimals = _tables(digits)
    whole, decimal = np.divmod(np.rint(scaled).astype(np.intp), 10**digits)
    # The sign from the sign bit: "%.4f" writes -0.0 and -0.00001 as "-0.0000".
    heads = wholes[whole + np.signbit(values) * WHOLE_LIMIT].tolist()
    return list(map(add, heads, decimals[decimal].tolist()))


def _one_by_one(values: np.ndarray, digits: int) -> list[str]:
    return (f"%.{digits}f\n" * len(values) % tuple(values.tolist())).split("\n")[:-1]
