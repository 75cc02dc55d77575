"""Faults for the Ray workers of tests/test_shards.py, installed in every worker of its
local cluster (Ray's worker_process_setup_hook).

A shard dies (SIGKILL, nothing cleaned up) right after it has written a checkpoint named
NAME when the folder $ACTSCOPE_TEST_RAY_FAULTS holds a file NAME.kill; the file is
renamed NAME.fired first, so the retried task, which resumes from that checkpoint, is
not killed again.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def install() -> None:
    faults = os.environ.get("ACTSCOPE_TEST_RAY_FAULTS")
    if not faults:
        return
    from actscope.indexer import checkpoint

    real_save = checkpoint.save_checkpoint

    def save_checkpoint(path, *args, **kwargs):
        real_save(path, *args, **kwargs)
        marker = Path(faults) / (Path(path).name + ".kill")
        try:
            os.rename(marker, marker.with_suffix(".fired"))
        except FileNotFoundError:
            return
        os.kill(os.getpid(), signal.SIGKILL)

    checkpoint.save_checkpoint = save_checkpoint
