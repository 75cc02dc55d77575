"""number_text.fixed writes every value as the % format does, whichever way it takes."""

from __future__ import annotations

import numpy as np
import pytest

from actscope.app.number_text import fixed


def _cases() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for scale in (1e-6, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0, 500.0, 1e4, 1e9):
        values = rng.normal(0.0, scale, 5000)
        out += [values, values.astype(np.float32).astype(np.float64)]  # float64, and float32 values
    # Exact ties at every number of digits (k / 2^n), and values around them.
    ties = np.arange(-40000, 40000) / 2.0**12
    out += [ties, np.nextafter(ties, np.inf), np.nextafter(ties, -np.inf)]
    specials = [0.0, -0.0, 5e-5, -5e-5, 0.125, -0.125, 0.375, 998.99995, -998.99995, 999.0, 1000.0, 1e-40, 1e300]
    out.append(np.array(specials))
    out.append(np.array([1.0, np.nan, -np.inf, np.inf]))
    return out


@pytest.mark.parametrize("digits", [1, 2, 3, 4])
def test_fixed_is_the_percent_format(digits):
    checked = 0
    for values in _cases():
        expected = [f"%.{digits}f" % v for v in values.tolist()]
        assert fixed(values, digits) == expected
        checked += len(values)
    assert checked > 100_000


def test_fixed_of_nothing():
    assert fixed(np.array([], dtype=np.float64), 4) == []
