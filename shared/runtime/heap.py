"""Hand the C heap's free pages back to the kernel after each message (glibc `malloc_trim`).

A stage's native work (PyAV probes and frame reads in worker threads, OpenSSL, libav* buffers) runs in the
threads of the default executor, and glibc gives each of them an arena of its own. What a message frees there
stays mapped: glibc returns only the top of an arena, so a few live chunks pin the pages below them, and the
process's RSS climbs message after message though its live heap (Python's and C's) stays flat: the fetch
worker grew ~21 KB per job over a 2,000-job soak, and one `malloc_trim(0)` on a running one gave back 62 MB
(BENCHMARKS.md, "Fetch worker RSS"). `malloc_trim(0)` walks every arena and releases (madvise) the free pages
wherever they are, in a millisecond or a few; nothing live moves. (Fragmentation, free space cut in pieces
too small to reuse, it does not undo.)

Elsewhere than glibc (musl, macOS) there is no `malloc_trim`: `trim_free_heap` does nothing there.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

TRIM_PAD_BYTES = 0  # malloc_trim(pad): 0 keeps no slack at the top of the main arena


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """libc's malloc_trim, or None where the C library has none (looked up among the symbols the interpreter
    already has loaded: no `ldconfig` run, as `ctypes.util.find_library` would do)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim  # type: ignore[no-any-return]


def trim_free_heap() -> bool:
    """Release the C heap's free pages to the kernel; True when some memory was released (glibc's answer)."""
    trim = _malloc_trim()
    return bool(trim(TRIM_PAD_BYTES)) if trim is not None else False
