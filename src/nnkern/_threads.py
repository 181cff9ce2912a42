"""The one place that decides how many threads nnkern's kernels use.

nnkern meets three thread pools in one process: OpenMP (the Cython kernels' ``prange``),
Numba's threading layer, and the BLAS that NumPy (the reference backend) calls. Left alone
each starts one thread per core and they fight over the cores. ``set_num_threads(n)``
sets all three: Cython kernels receive ``get_num_threads()`` explicitly, Numba gets
``numba.set_num_threads``, and the BLAS and OpenMP runtimes are limited through
threadpoolctl.

More threads than the cores this process may use only make the threads of every parallel
region wait for each other's turn on a core (a training step ran ~20x slower with 64
threads on 2 cores): a larger count is lowered to the usable cores with an
:class:`OversubscriptionWarning`, unless the caller insists (``oversubscribe=True``, or
``NNKERN_ALLOW_OVERSUBSCRIPTION=1`` in the environment).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings

from . import _validate

# How long an idle OpenMP thread (the Cython kernels' and Numba's "omp" layer) busy-waits for
# the next parallel region or barrier before it sleeps. libgomp's default spins ~5 ms: a
# training step opens many short regions, and whenever another process holds a core a
# spinning worker steals the time its partner needs (a step slowed 10-30x on a loaded
# 2-core machine). Sleeping at once (OMP_WAIT_POLICY=PASSIVE) is no better: waking a
# sleeping thread costs ~65 us on the development VM, more than a small layer's whole
# kernel. So spin about as long as a wake-up costs (4000 spins, ~60-100 us there), then
# sleep: a wait never costs more than about twice what the better of the two would have.
# Read by libgomp when it loads, i.e. when the first compiled kernel module is imported,
# after this; a setting of the user's own wins.
SPINCOUNT_SET_HERE = "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ
if SPINCOUNT_SET_HERE:
    os.environ["GOMP_SPINCOUNT"] = "4000"


@contextlib.contextmanager
def openmp_defaults():
    """Within this block the environment lacks the spin count nnkern set (a user's own
    stays): for loading another library's OpenMP runtime with its own defaults, as the
    benchmark does with PyTorch's bundled libgomp so that PyTorch runs as its users get it."""
    if not SPINCOUNT_SET_HERE or "GOMP_SPINCOUNT" not in os.environ:
        yield
        return
    spincount = os.environ.pop("GOMP_SPINCOUNT")
    try:
        yield
    finally:
        os.environ["GOMP_SPINCOUNT"] = spincount

__all__ = ["set_num_threads", "get_num_threads", "default_num_threads", "OversubscriptionWarning",
           "oversubscription_allowed"]

ALLOW_OVERSUBSCRIPTION_ENV = "NNKERN_ALLOW_OVERSUBSCRIPTION"


class OversubscriptionWarning(UserWarning):
    """More threads were asked for than this process has cores; fewer are used."""


_oversubscription_blocks = 0  # open allow_oversubscription() blocks


def oversubscription_allowed() -> bool:
    """Whether thread counts above the cores are used as asked: inside
    :func:`allow_oversubscription`, or with ``NNKERN_ALLOW_OVERSUBSCRIPTION=1``."""
    return _oversubscription_blocks > 0 or \
        os.environ.get(ALLOW_OVERSUBSCRIPTION_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def allow_oversubscription():
    """Within this block every ``set_num_threads(n)`` uses ``n`` even above the cores (what
    the command line's ``--oversubscribe`` does for one command)."""
    global _oversubscription_blocks
    _oversubscription_blocks += 1
    try:
        yield
    finally:
        _oversubscription_blocks -= 1


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


def set_num_threads(n: int, *, oversubscribe: bool = False) -> None:
    """Use ``n`` threads in every pool nnkern touches: OpenMP, Numba and the BLAS.

    ``n`` above the cores this process may use is lowered to that number with an
    :class:`OversubscriptionWarning`, unless ``oversubscribe=True`` or the environment
    sets ``NNKERN_ALLOW_OVERSUBSCRIPTION=1``."""
    global _num_threads
    n = _validate.integer("set_num_threads", "n", n, minimum=1, expected="a positive integer", type_error=ValueError)
    usable = default_num_threads()
    if n > usable and not (oversubscribe or oversubscription_allowed()):
        warnings.warn(
            f"nnkern.set_num_threads: {n} threads requested, but this process may use only {usable} "
            f"core(s); using {usable} (threads beyond the cores slow every kernel down). To use {n} anyway, "
            f"pass oversubscribe=True or set {ALLOW_OVERSUBSCRIPTION_ENV}=1",
            OversubscriptionWarning, stacklevel=2)
        n = usable
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
