"""The process's malloc policy, set once at start-up, before the model and the thread pools.

Under sustained mixed traffic glibc's defaults let the service's RSS climb for many minutes
(about +20 MiB a minute after four minutes, still rising after ten) while the memory actually
in use stays flat; ``mallinfo2`` shows the difference as free memory held inside the heap:

- glibc raises its mmap threshold every time a large block (an image, a tensor, a PNG) is
  freed, up to 32 MiB, so after the first requests such blocks come from the heap instead of
  ``mmap`` and, freed, stay in it as fragments;
- every thread that allocates under contention gets an arena of its own (up to 8 per core),
  each keeping such fragments; the service has dozens of worker threads.

Freezing the mmap threshold at 1 MiB and the trim threshold at glibc's starting value
(128 KiB) sends large blocks (decoded images, PNGs, batches of tensors) back to the system on
``free``, and two arenas bound the per-thread pools. The mmap threshold is not glibc's 128 KiB
starting value: the twin's single-image tensors (150-720 KiB) would then be mapped afresh and
page-faulted on every allocation (about 7,800 page faults per gradient request, 72,000 per
SmoothGrad), which made the gradient methods a third slower; at 1 MiB they come from the heap
(530 and 43,000), for a few MiB more retained by the churn of ``tests/unit/inference/
test_allocator.py``. An explicit ``MALLOC_ARENA_MAX`` / ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` in the environment still wins for its own parameter. Other C
libraries (musl, macOS) are left alone, and logged.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform
from collections.abc import Mapping

log = logging.getLogger(__name__)

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

ARENA_MAX = 2
MMAP_THRESHOLD_BYTES = 1024 * 1024
TRIM_THRESHOLD_BYTES = 128 * 1024

# parameter -> (value, the environment variable that overrides it)
POLICY: dict[int, tuple[int, str]] = {
    M_ARENA_MAX: (ARENA_MAX, "MALLOC_ARENA_MAX"),
    M_MMAP_THRESHOLD: (MMAP_THRESHOLD_BYTES, "MALLOC_MMAP_THRESHOLD_"),
    M_TRIM_THRESHOLD: (TRIM_THRESHOLD_BYTES, "MALLOC_TRIM_THRESHOLD_"),
}


def configure_malloc(environ: Mapping[str, str] = os.environ) -> dict[str, int]:
    """Apply ``POLICY`` through glibc's ``mallopt``; returns what was set, by variable name
    (empty where the C library is not glibc)."""
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        log.info(
            "C library is %s, not glibc: malloc policy left at its defaults", libc_name or "unknown"
        )
        return {}
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    applied = {}
    for parameter, (value, variable) in POLICY.items():
        if variable in environ:
            continue
        if libc.mallopt(parameter, value) != 1:
            raise OSError(f"mallopt refused {variable}={value}")
        applied[variable] = value
    settings = ", ".join(f"{name}={value}" for name, value in applied.items())
    log.info("malloc policy: %s", settings or "all from the environment")
    return applied


def release_free_memory() -> bool:
    """Give the free memory inside glibc's heaps back to the system (``malloc_trim(0)``): for
    after a large release, such as an unloaded model, whose pages would otherwise stay
    resident as fragments among live blocks. False where the C library is not glibc."""
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.malloc_trim(0))
