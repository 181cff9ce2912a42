"""The one place that decides how many threads nnkern's kernels use.

nnkern meets three thread pools in one process: OpenMP (the Cython kernels' ``prange``),
Numba's threading layer, and the BLAS that NumPy (the reference backend) calls. Left alone
each starts one thread per core and they fight over the cores. ``set_num_threads(n)``
sets all three: Cython kernels receive ``get_num_threads()`` explicitly, Numba gets
``numba.set_num_threads``, and the BLAS and OpenMP runtimes are limited through
threadpoolctl.
"""

from __future__ import annotations

import os
import sys

# libgomp's default lets idle OpenMP threads spin for a while waiting for the next parallel
# region. A training step opens a dozen short regions; whenever another process holds a
# core, a spinning worker steals the time its partner needs and a step slows 10-30x
# (measured on a loaded 2-core machine). Passive waiting sleeps instead. Read by libgomp when
# it loads, i.e. when the first compiled kernel module is imported, after this; a value the
# user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__all__ = ["set_num_threads", "get_num_threads", "default_num_threads"]


def default_num_threads() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


_num_threads: int | None = None


def get_num_threads() -> int:
    """The thread count every nnkern kernel uses (default: the number of cores)."""
    if _num_threads is None:
        set_num_threads(int(os.environ.get("NNKERN_NUM_THREADS", default_num_threads())))
    return _num_threads


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in every pool nnkern touches: OpenMP, Numba and the BLAS."""
    global _num_threads
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive integer, got {n!r}")
    _num_threads = n
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=n)
    apply_to_numba()


def apply_to_numba() -> None:
    """Pass the thread count to Numba, if Numba has been imported (it is never imported
    just for this). Numba cannot go above the pool size it was started with."""
    if _num_threads is None or "numba" not in sys.modules:
        return
    import numba

    numba.set_num_threads(min(_num_threads, numba.config.NUMBA_NUM_THREADS))
