"""Host-memory reuse for CPU rendering (glibc).

glibc serves large allocations with fresh ``mmap`` pages and gives freed memory back to the
system, so a tensor above its mmap threshold page-faults on first touch every time it is
made. A CPU sampler step makes many such tensors: on the 2-core development VM a tiny
full-UNet step took about 8000 page faults (about 20 ms, 7% of the step). With a high mmap
threshold and trim threshold, large tensors come from the heap and freed memory stays there
for the next step: no faults in the steady state, at the cost of keeping the process's peak
heap. A process-wide setting, so the engine never applies it on its own: the farm's render
processes and the benchmarks call ``keep_freed_host_memory`` (a notebook can too).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 1 << 30
"""Allocations up to 1 GiB come from the heap; up to 1 GiB of free heap stays mapped."""


@functools.lru_cache(maxsize=1)
def keep_freed_host_memory() -> bool:
    """Tune glibc's allocator as above (once per process); False where there is no glibc
    ``mallopt`` (macOS, musl) or it refused the values."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))
