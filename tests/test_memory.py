"""keep_freed_memory: a batch loop's large blocks come back on resident pages."""

from __future__ import annotations

import subprocess
import sys
import tempfile

import pytest

# Four 16 MB blocks written and freed per "batch", as the forward pass does with its
# tensors; the page faults of 20 batches after the first are printed.
BATCHES = """
import resource, sys
import numpy as np
from actscope.indexer.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def batch():
    parts = [np.ones(4 << 20, dtype=np.float32) for _ in range(4)]
    return sum(float(p[-1]) for p in parts)
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str, script: str = BATCHES) -> int:
    """Page faults the script prints (its last line) when run in a fresh process with `mode`."""
    # Run outside the checkout, whose actscope/ folder holds only part of the package.
    done = subprocess.run(
        [sys.executable, "-c", script, mode], capture_output=True, text=True, check=True, cwd=tempfile.gettempdir()
    )
    return int(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    kept, default = _faults("keep"), _faults("default")
    pages_per_batch = 4 * (16 << 20) // 4096
    assert kept < pages_per_batch // 10  # not even a tenth of one batch's pages faulted again
    # glibc's defaults hand much of it back to the kernel every batch: the setting matters.
    assert default > pages_per_batch


# The same batches with an index written between them: through StoreWriter ("writer") or
# through a DuckDB instance of its own per file ("connect", for comparison).
BATCHES_AND_INDEXES = """
import resource, sys, tempfile, time
from pathlib import Path
import duckdb
import torch  # its tensors, unlike numpy's large arrays, are not on transparent huge pages
from actscope.indexer.memory import keep_freed_memory
from actscope.indexer.store.writer import StoreWriter
assert keep_freed_memory()
work = Path(tempfile.mkdtemp())
def batch():
    parts = [torch.ones(4 << 20) for _ in range(4)]
    return sum(float(p[-1]) for p in parts)
def index(i):
    time.sleep(0.2)  # DuckDB trims at most every 100 ms; in a run, trims are seconds apart
    if sys.argv[1] == "writer":
        writer = StoreWriter(work / f"{i}.tmp", "m", fresh=True)
        writer.set_meta("note", "x")
        writer.finish(work / f"{i}.duckdb")
    else:
        con = duckdb.connect(str(work / f"{i}.duckdb"))
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
        con.close()
    time.sleep(0.2)
batch()
index(0)  # the first one may start what it needs
batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for i in range(1, 6):
    index(i)
    batch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_writing_an_index_keeps_the_freed_memory():
    writer, connect = _faults("writer", BATCHES_AND_INDEXES), _faults("connect", BATCHES_AND_INDEXES)
    pages_per_batch = 4 * (16 << 20) // 4096
    # Five indexes written: their own work faults some pages, never the batches' again.
    assert writer < pages_per_batch
    # A DuckDB instance per file trims the heap as it starts and stops: the batch after
    # each pages everything in again.
    assert connect > 4 * pages_per_batch
