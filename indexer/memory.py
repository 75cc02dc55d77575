"""How an indexing process asks the C allocator to keep the memory it frees.

Every batch allocates and frees the same large tensors (hook activations, SAE chunks of
up to 16 MB). glibc gives the free top of its heap back to the kernel once it exceeds a
trim threshold (by default twice the largest block it has seen mapped, at most 64 MB),
so whether a batch's tensors land on resident pages or on fresh ones that the kernel
must fault in and zero depended on what else happened to sit at the top of the heap:
from ~30 thousand to ~3 million page faults per 262k tokens for the same forward pass.
Fixing the thresholds makes the forward pass reuse its memory whatever the heap's state.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
KEEP_FREE_BYTES = 512 << 20  # free heap kept for reuse before any goes back to the kernel
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest: blocks up to this come from the heap


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds for a long batch job; True if it took effect
    (False elsewhere, e.g. with musl or on macOS, where nothing is changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREE_BYTES)) and bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
