"""Process-wide tuning for a small CPU box; `python -m service` applies it before numpy loads.

Nothing here imports numpy: `limit_native_threads` only works before numpy (and
its BLAS) is loaded. Both steps are also safe to call later, where they do what
they still can.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import sys

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8


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
    # one arena: malloc_trim gave back what the main arena freed but not the worker threads'
    # arenas (eight silent 300-s FLACs left 85 MB behind; one arena, none)
    ok = mallopt(_M_ARENA_MAX, 1) == 1 and ok
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


def available_cpus(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (a
    container's `cpus:`), at least 1. `os.cpu_count()` counts the host's."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    if quota is not None:
        count = min(count, math.ceil(quota))
    return max(1, count)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The cgroup CPU quota in CPUs (v2 cpu.max, else v1 cfs quota ÷ period); None if
    there is none."""

    def read(name: str) -> str | None:
        try:
            with open(os.path.join(root, name)) as f:
                return f.read().strip()
        except OSError:
            return None

    try:
        v2 = read("cpu.max")
        if v2 is not None:
            quota, period = v2.split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_us, period_us = read("cpu/cpu.cfs_quota_us"), read("cpu/cpu.cfs_period_us")
        if quota_us is None or period_us is None:
            return None
        q, p = int(quota_us), int(period_us)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
