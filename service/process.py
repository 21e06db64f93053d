"""Process-wide tuning for a small CPU box; `python -m service` applies it before numpy loads.

Nothing here imports numpy: `limit_native_threads` only works before numpy (and
its BLAS) is loaded. Both steps are also safe to call later, where they do what
they still can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def limit_native_threads() -> None:
    """One BLAS/OpenMP thread per caller, unless the environment says otherwise.

    The service's parallelism is its worker threads (AUSCULT_CPU_WORKERS) and
    onnxruntime's own pool (AUSCULT_ORT_THREADS); a BLAS pool per call on top of
    those oversubscribes 2 cores (the mel projection went from 0.3 to 10+ ms).
    """
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 64 << 20) -> bool:
    """Let glibc reuse freed blocks instead of returning them to the kernel.

    Every clip allocates a few MB of short-lived arrays (frames, spectrum, power).
    By default glibc serves such sizes with fresh mmap pages and unmaps them on
    free, so each clip pays page faults again: on this VM that made the log-mel
    step 3x slower (1.5 → 5 ms). Up to `trim_threshold` stays free per malloc arena:
    in practice a few tens of MB of RSS (bench/serving.py reports RSS after load).
    Returns False where mallopt is not available (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    return mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok


def release_memory() -> bool:
    """Give freed heap memory back to the kernel (glibc malloc_trim), in every arena.

    `keep_freed_memory` keeps up to 64 MB free per arena for speed, and a batch's
    uploads and arrays freed in worker threads' arenas were never returned (2 GB idle
    after a few large batches; malloc_trim brought it to 133 MB). The service calls this
    after a request that buffered a lot. Returns False where it is not available.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)
    return True


def configure() -> None:
    """Everything above; call first thing in the process."""
    limit_native_threads()
    keep_freed_memory()
