"""Keep freed memory for the next training step instead of returning it to the OS.

Every step allocates the same large tensors (B × |T| logits and their gradient, the dense
item-table gradients: tens of MB at ML-20M size). glibc serves blocks above its mmap threshold
(at most 32 MB by default) with fresh mappings and unmaps them when freed, so each step pays the
kernel's page faults and zeroing again: a quarter of a bf16 step at ML-20M size here.
Raising the mmap and trim thresholds lets freed blocks be reused (after a few steps, once the
heap has a free block that fits torch's aligned requests), at the price of holding the peak
footprint; tcmalloc/jemalloc via ``LD_PRELOAD`` do the same more thoroughly.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("recoder.allocator")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_THRESHOLD = 1 << 30  # 1 GiB: larger single blocks are still mapped and returned


def reuse_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks up to 1 GiB for reuse; False where the C
    library is not glibc (nothing changes then)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        mallopt = getattr(libc, "mallopt", None)
    except OSError:
        mallopt = None
    if mallopt is None:
        log.debug("no mallopt in the C library: freed memory goes back to the OS as usual")
        return False
    applied = [bool(mallopt(option, _THRESHOLD)) for option in (_M_MMAP_THRESHOLD, _M_TRIM_THRESHOLD)]
    return all(applied)
