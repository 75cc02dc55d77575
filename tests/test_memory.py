"""keep_freed_memory: a batch loop's large blocks come back on resident pages."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Four 16 MB blocks written and freed per "batch", as the forward pass does with its
# tensors; the page faults of 20 batches after the first are printed.
BATCHES = """
import resource, sys
import numpy as np
from indexer.memory import keep_freed_memory
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


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", BATCHES, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_without_page_faults():
    kept, default = _faults("keep"), _faults("default")
    pages_per_batch = 4 * (16 << 20) // 4096
    assert kept < pages_per_batch // 10  # not even a tenth of one batch's pages faulted again
    # glibc's defaults hand much of it back to the kernel every batch: the setting matters.
    assert default > pages_per_batch
