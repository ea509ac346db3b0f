"""Host memory that Python has freed but the C allocator keeps: a learner that streams towers
frees one and reads the next, and glibc keeps most freed tensors (a few MiB each, under its
dynamic mmap threshold) in its heap, so the process's resident size stays at its peak. Handing
them back between stages keeps the peak what the stage holds."""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
from functools import lru_cache
from typing import Any, Optional


@lru_cache(maxsize=1)
def _libc() -> Optional[Any]:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None  # glibc only


def release_freed_memory() -> None:
    """Collect garbage and give the allocator's free pages back to the system (glibc; elsewhere a no-op)."""
    gc.collect()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
