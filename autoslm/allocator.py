"""The C allocator's handling of large blocks, for a process that evaluates in llama.cpp.

glibc serves a block of 128 KB or more with its own mapping and unmaps it when it is freed, but each such free raises
that threshold to the block's size (up to 32 MB), so later blocks up to that size come from the heap, where freed
ones stay resident. Evaluation allocates logits of 1-30 MB per task row, many times over: Gemma-3-270M's full
evaluation in llama.cpp added 2.47 GB to its process with the moving threshold against 1.46 GB with a fixed 1 MB one,
in the same time (`benchmarks/eval_memory.py`; docs/benchmarks.md, "Evaluation memory"). Setting the threshold once
fixes it for the process.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter
THRESHOLD = 1 << 20

_done = False


def unmap_large_blocks() -> bool:
    """Blocks of THRESHOLD bytes or more get their own mapping, returned to the system when freed (glibc; a no-op
    elsewhere). True where it was set."""
    global _done
    if _done:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = libc.mallopt if libc is not None else None
    except (OSError, AttributeError):
        return False
    if mallopt is None:
        return False
    _done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD))
    return _done


__all__ = ["unmap_large_blocks"]
