"""The background producer of batches: order, errors and early stops."""

import threading

import pytest

from indexer.errors import ActscopeError
from indexer.prefetch import prefetch


def test_items_in_order():
    assert list(prefetch(iter(range(100)), depth=3)) == list(range(100))


def test_producer_error_reaches_the_consumer():
    def items():
        yield 1
        raise ActscopeError("--dataset x: broken")

    stream = prefetch(items())
    assert next(stream) == 1
    with pytest.raises(ActscopeError, match="broken"):
        next(stream)


def test_early_stop_joins_the_producer():
    produced = []

    def items():
        for i in range(10_000):
            produced.append(i)
            yield i

    stream = prefetch(items(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert not any(t.name == "actscope-prefetch" for t in threading.enumerate())
    assert len(produced) < 10  # it stopped instead of running through the iterator
