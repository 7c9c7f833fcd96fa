"""glibc's malloc, set for a proxy's buffers: freed memory is kept for the next read.

A proxy moving a stream allocates and frees buffers of a read's size (up to 256 KiB, above
glibc's initial 128 KiB mmap threshold) thousands of times a second. By default glibc maps and
unmaps them, or grows and trims the heap's top around them, so the pages fault in again on
every reuse: on this project's 2-core VM a meshed stream's sending ztunnel took ~40 000 to
~960 000 page faults per 8 s stream, and a fifth of its CPU in the fault path. Peers
choose allocators that keep freed memory (Envoy links tcmalloc; Istio's ztunnel can use
jemalloc); here two glibc settings do it. Under memory pressure the proxy hands the free
memory back (`give_back`, at the overload module's close-idle stage), so RSS can fall.
"""

from __future__ import annotations

import ctypes
import functools
import logging

log = logging.getLogger("heap")

# mallopt parameters (glibc <malloc.h>).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Free memory at the heap's top kept rather than trimmed: several windows of buffers in flight
# (a stream's 4 MiB window). glibc's dynamic default is twice the mmap threshold.
TRIM_THRESHOLD = 16 * 1024 * 1024
# Allocations below this come from the heap, never a fresh mapping: a read (256 KiB) and the
# largest DATA frame we accept (1 MiB). Setting it turns off glibc's sliding threshold.
MMAP_THRESHOLD = 1024 * 1024 + 4096


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The process's own C library (as localcluster.shim loads it), if its malloc is glibc's."""
    libc = ctypes.CDLL(None)
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def keep_freed(trim_threshold: int = TRIM_THRESHOLD, mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """At start: keep freed buffers for reuse. False where the C library is not glibc."""
    libc = _libc()
    if libc is None:
        log.info("not glibc: malloc left as it is")
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_threshold) == 1)
    ok = bool(libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1) and ok
    if not ok:
        log.warning("mallopt refused the proxy's heap settings: malloc left as it is")
    return ok


def give_back() -> None:
    """Return the heap's free memory to the system (memory pressure: let RSS fall)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
