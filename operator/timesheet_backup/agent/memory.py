"""The agent's large buffers go back to the system when freed (glibc's malloc).

glibc serves an allocation above its mmap threshold with its own mmap, unmapped on free;
below it, from a heap that keeps freed memory for reuse. The threshold starts at 128 KiB but
rises to the size of each large block freed (up to 32 MiB): after the first 16 MiB upload
part is freed, every later part comes from the heap, and with parts freed by the upload
threads in their own arenas the process holds far more than the parts in flight. Measured
on an uploads archive with compression off and four parts in flight: 200 MiB peak with the
moving threshold, 148 MiB with it fixed at 1 MiB (docs/agent.md). Fixing the threshold
(`mallopt(M_MMAP_THRESHOLD)`, as `MALLOC_MMAP_THRESHOLD_` would) keeps it where it starts
to matter and stops it moving.
"""

from __future__ import annotations

import ctypes
import logging
from typing import Final

log = logging.getLogger(__name__)

M_MMAP_THRESHOLD: Final = -3  # glibc's <malloc.h>
# Upload parts, zstd jobs and 1 MiB reads are above it; Python's small objects far below.
MMAP_THRESHOLD: Final = 1024 * 1024


def return_large_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc mallopt (then nothing
    changes: musl and others do not keep freed large blocks the same way)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    done = bool(mallopt(M_MMAP_THRESHOLD, threshold))
    if not done:
        log.debug("mallopt(M_MMAP_THRESHOLD) refused: the allocator keeps its own policy")
    return done
