"""glibc malloc settings for a training or evaluation process: freed tensor memory stays in the process for the
next step instead of going back to the kernel.

With glibc's defaults the large buffers of a step (activations, gradients) are mmapped and unmapped, or trimmed
off the heap, every time, so each step faults all of its memory in again, page by page, in kernel time. tcmalloc
or jemalloc (LD_PRELOAD) avoid that as well; glibc's own `mallopt` needs no extra library. docs/performance.md
has the measurement and its command (scripts/compare_malloc.py).

Settings a user gave glibc (MALLOC_*_ variables, GLIBC_TUNABLES) win: then nothing is changed.
"""

import ctypes
import os

# mallopt parameter numbers, from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_MAX = -4

SETTINGS = (
    (M_MMAP_MAX, 0),  # every block from the heap, where a freed one is reused; never a mapping of its own
    (M_TRIM_THRESHOLD, 1 << 30),  # give free memory at the heap's top back only beyond 1 GiB
    (M_TOP_PAD, 64 << 20),  # grow the heap 64 MiB at a time, not by each request
)


def user_set_malloc(environ=os.environ) -> bool:
    return any(name.startswith("MALLOC_") for name in environ) or "malloc" in environ.get("GLIBC_TUNABLES", "")


def keep_freed_memory(environ=os.environ) -> bool:
    """Applies SETTINGS through glibc's mallopt; False (nothing changed) where the user configured malloc or the C
    library is not glibc (macOS, musl: no mallopt, or one that refuses them)."""
    if user_set_malloc(environ):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return all([mallopt(parameter, value) == 1 for parameter, value in SETTINGS])
