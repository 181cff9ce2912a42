"""The one place that decides how many threads nnkern's kernels use.

**The budget** (:func:`thread_budget`, :func:`get_num_threads`) comes from the first of:

1. ``set_num_threads(n)``;
2. ``NNKERN_NUM_THREADS`` in the environment;
3. the limits the host has set, the smallest of them where it is below the machine's
   logical CPUs: ``OMP_NUM_THREADS``, ``NUMBA_NUM_THREADS``, a BLAS or OpenMP thread pool
   limited below the CPUs as threadpoolctl sees it from the calling thread (inside
   ``threadpool_limits(1)``, or a library started with fewer threads), the CPU affinity
   mask and the cgroup CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``);
4. the machine's logical CPUs.

joblib's loky workers and Dask's worker processes set ``OMP_NUM_THREADS`` (to the cores
divided among the workers, or 1), so each nnkern fit inside them uses its share instead of
every core. Options 1 and 2 are lowered to the cores this process may use (affinity and
quota) with an :class:`OversubscriptionWarning`, unless the caller insists
(``oversubscribe=True``, or ``NNKERN_ALLOW_OVERSUBSCRIPTION=1``): threads beyond the cores
only make every parallel region wait for threads that are not running (a training step ran
~20x slower with 64 threads on 2 cores).

**Concurrent calls.** Every kernel call and training step counts as one active caller while
it runs (:func:`claim`); each gets ``budget // active callers`` threads (at least one), so
that nnkern calls from several Python threads together stay within the budget.

**Small work.** ``claim(work)`` gives one thread when ``work`` (a training step's largest
product) is below :data:`SPLIT_MIN_MACS` multiply-adds: splitting it costs more in waiting
than it saves (measured: ``benchmarks/small_fit_threads.py``). The layer-by-layer steps
apply it; the fused training steps plan their thread count for the machine instead
(:mod:`nnkern._plan`: timed on their first steps, cached on disk) and apply this rule only
with ``NNKERN_PLAN=off``.

**Pools.** The Cython kernels receive their thread count explicitly; the Numba kernels too,
and Numba's own count for the calling thread is set to it during the call (Numba keeps one
per thread). nnkern sets no other library's thread pool: the NumPy reference backend's
products run on NumPy's BLAS as the user and the host have set it (changing OpenBLAS's
count around them is not safe while another thread is inside OpenBLAS: it kept a wrong
count after concurrent fits).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import sys
import threading
import time
import warnings

from . import _validate

__all__ = ["set_num_threads", "get_num_threads", "thread_budget", "default_num_threads",
           "OversubscriptionWarning", "oversubscription_allowed"]

BUDGET_ENV = "NNKERN_NUM_THREADS"
ALLOW_OVERSUBSCRIPTION_ENV = "NNKERN_ALLOW_OVERSUBSCRIPTION"
HOST_THREAD_ENVS = ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")

# The machine's logical CPUs (os.cpu_count() reads a file each time)
CPUS = max(1, os.cpu_count() or 1)
# A running call reads the host's limits again when its thread's last reading is older than
# this: reading them costs a few microseconds, a small training step a few tens.
BUDGET_REREAD_S = 0.01

# A call whose largest product (batch rows x fan_in x fan_out) is below this runs on one
# thread. benchmarks/small_fit_threads.py on a 2-core AMD EPYC (Zen 3), Cython step: 2
# threads 0.88-1.02x of 1 up to 3.3 M multiply-adds, 1.36x at 6.6 M, 1.50x at 13 M
# (BENCHMARKS.md "Where a second thread pays"); the threshold lies between the two. The fused
# training steps follow their timed plan instead (nnkern._plan), and this rule only with
# NNKERN_PLAN=off.
SPLIT_MIN_MACS = 1 << 22

# How long an idle OpenMP thread of the runtime nnkern's kernels load (the system libgomp,
# shared by the Cython kernels and Numba's "omp" layer) busy-waits for the next parallel
# region or barrier before it sleeps. libgomp's default spins ~5 ms: a training step opens
# many short regions, and whenever another process holds a core a spinning worker steals the
# time its partner needs (a step slowed 10-30x on a loaded 2-core machine). Sleeping at once
# (OMP_WAIT_POLICY=PASSIVE) is no better: waking a sleeping thread costs ~65 us on the
# development VM, more than a small layer's whole kernel. So spin about as long as a wake-up
# costs (4000 spins, ~60-100 us there), then sleep. libgomp reads it once, when it loads:
# :func:`load_openmp_runtime` sets it only while it loads the runtime, so other
# OpenMP runtimes loaded later and child processes see the user's environment.
GOMP_SPINCOUNT = "4000"


@contextlib.contextmanager
def openmp_runtime_loading():
    """Around the imports that load nnkern's OpenMP runtime (the Cython kernels, Numba's
    threading layer): ``GOMP_SPINCOUNT`` is set while they run, unless the user has set it
    or ``OMP_WAIT_POLICY``, and removed again after. A runtime already loaded keeps the
    setting it started with."""
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        yield
        return
    os.environ["GOMP_SPINCOUNT"] = GOMP_SPINCOUNT
    try:
        yield
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)


def load_openmp_runtime() -> None:
    """Load the system's GNU OpenMP runtime (libgomp) now, within
    :func:`openmp_runtime_loading`: before the Cython kernels and Numba's omp layer, which
    link it, so that it starts with nnkern's spin count. Without libgomp (another OpenMP,
    another platform) nothing is set."""
    with openmp_runtime_loading():
        with contextlib.suppress(OSError):
            ctypes.CDLL("libgomp.so.1")


@contextlib.contextmanager
def openmp_defaults():
    """Kept for callers that load another library's OpenMP runtime (the benchmark's
    PyTorch): the spin count is set only while nnkern's own runtime loads, so the block
    already sees the user's environment."""
    yield


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


# ---------------------------------------------------------------------------------------
# What the host allows
# ---------------------------------------------------------------------------------------


def _affinity_cpus() -> int | None:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def cgroup_cpu_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> int | None:
    """The CPUs this process's cgroup quota allows (rounded up), the tightest of its cgroup
    and the cgroups above it, or None without a quota. cgroup v2 (``cpu.max``: "QUOTA
    PERIOD" or "max PERIOD") and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of the
    "cpu" controller, -1: none)."""
    listing = _read(proc_cgroup)
    if listing is None:
        return None
    limits = []
    for line in listing.splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: "0::/path"
            dirs = [os.path.join(root, path.lstrip("/"))]
            parse = _v2_limit
        elif "cpu" in controllers.split(","):
            mount = next((os.path.join(root, name) for name in (controllers, "cpu", "cpu,cpuacct")
                          if os.path.isdir(os.path.join(root, name))), None)
            if mount is None:
                continue
            dirs = [os.path.join(mount, path.lstrip("/"))]
            parse = _v1_limit
        else:
            continue
        # the process's own cgroup and every one above it (a container often sees only "/")
        while True:
            top = dirs[-1]
            parent = os.path.dirname(top.rstrip("/"))
            if len(parent) < len(root.rstrip("/")) or parent == top:
                break
            dirs.append(parent)
        limits += [n for n in map(parse, dirs) if n is not None]
    return min(limits) if limits else None


def _v2_limit(directory: str) -> int | None:
    text = _read(os.path.join(directory, "cpu.max"))
    if not text:
        return None
    quota, _, period = text.partition(" ")
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period or 100000)))
    except ValueError:
        return None


def _v1_limit(directory: str) -> int | None:
    quota, period = (_read(os.path.join(directory, name)) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
    try:
        quota, period = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    return max(1, math.ceil(quota / period)) if quota > 0 and period > 0 else None


_cgroup_cpus: tuple[int | None] | None = None  # read once per process


def _quota_cpus() -> int | None:
    global _cgroup_cpus
    if _cgroup_cpus is None:
        _cgroup_cpus = (cgroup_cpu_limit(),)
    return _cgroup_cpus[0]


def default_num_threads() -> int:
    """The number of cores this process may run on: the CPU affinity mask and the cgroup
    CPU quota, whichever is smaller."""
    counts = [n for n in (_affinity_cpus(), _quota_cpus()) if n is not None]
    return max(1, min(counts) if counts else CPUS)


def _env_count(name: str) -> int | None:
    """A thread count from the environment: a positive integer (OMP_NUM_THREADS' nested
    "4,2" form: its first level); anything else is ignored, as the runtimes ignore it."""
    value = os.environ.get(name)
    if not value:
        return None
    try:
        n = int(value.split(",")[0])
    except ValueError:
        return None
    return n if n >= 1 else None


def _extension_modules() -> int:
    """How many compiled extension modules Python has imported."""
    return sum(1 for module in list(sys.modules.values())
               if str(getattr(module, "__file__", None) or "").endswith((".so", ".pyd")))


class _Pools:
    """threadpoolctl's view of the BLAS and OpenMP runtimes loaded in this process, scanned
    again when Python has imported a compiled extension since (it may have loaded one). A
    scan reads every loaded library's path (10-50 ms with SciPy and scikit-learn loaded), so
    imports of Python modules alone do not start one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._modules = -1
        self._extensions = -1
        self._libs = []

    def libs(self) -> list:
        if len(sys.modules) != self._modules:
            with self._lock:
                if len(sys.modules) != self._modules:
                    self._modules = len(sys.modules)
                    extensions = _extension_modules()
                    if extensions != self._extensions:
                        from threadpoolctl import ThreadpoolController

                        self._libs = [lib for lib in ThreadpoolController().lib_controllers
                                      if lib.user_api in ("blas", "openmp")]
                        self._extensions = extensions
        return self._libs

    def smallest(self) -> tuple[int, str] | None:
        """(threads, name) of the pool with the fewest."""
        found = [(lib.num_threads, lib.internal_api) for lib in self.libs()]
        return min(found, key=lambda pair: pair[0]) if found else None


_pools = _Pools()


def host_limits() -> list[tuple[int, str]]:
    """Every thread limit the host sets, as (count, where it comes from)."""
    limits = [(n, name) for name in HOST_THREAD_ENVS if (n := _env_count(name)) is not None]
    pool = _pools.smallest()
    if pool is not None:
        limits.append((pool[0], f"threadpoolctl ({pool[1]} pool)"))
    affinity = _affinity_cpus()
    if affinity is not None:
        limits.append((affinity, "CPU affinity"))
    quota = _quota_cpus()
    if quota is not None:
        limits.append((quota, "cgroup CPU quota"))
    return limits


# ---------------------------------------------------------------------------------------
# The budget
# ---------------------------------------------------------------------------------------

_num_threads: int | None = None  # set_num_threads()
_generation = 0  # changes with every set_num_threads(): running calls read the budget again


def _lowered_to_cores(n: int, what: str) -> int:
    usable = default_num_threads()
    if n > usable and not oversubscription_allowed():
        warnings.warn(
            f"nnkern: {what}: {n} threads requested, but this process may use only {usable} "
            f"core(s); using {usable} (threads beyond the cores slow every kernel down). To use {n} anyway, "
            f"pass oversubscribe=True or set {ALLOW_OVERSUBSCRIPTION_ENV}=1",
            OversubscriptionWarning, stacklevel=3)
        return usable
    return n


def thread_budget() -> tuple[int, str]:
    """(the thread count nnkern uses now, where it comes from): "set_num_threads()",
    "NNKERN_NUM_THREADS", one of the host's limits (e.g. "OMP_NUM_THREADS", "CPU affinity",
    "cgroup CPU quota", "threadpoolctl (openblas pool)") or "CPUs"."""
    if _num_threads is not None:
        return _num_threads, "set_num_threads()"
    raw = os.environ.get(BUDGET_ENV)
    if raw is not None and raw.strip():
        try:
            n = int(raw)
        except ValueError:
            n = 0
        if n < 1:
            raise ValueError(f"{BUDGET_ENV} must be a positive integer, got {raw!r}")
        return _lowered_to_cores(n, BUDGET_ENV), BUDGET_ENV
    below = [limit for limit in host_limits() if limit[0] < CPUS]
    return min(below, key=lambda limit: limit[0]) if below else (CPUS, "CPUs")


def get_num_threads() -> int:
    """The thread budget: the most threads one nnkern call uses (:func:`thread_budget` says
    where it comes from)."""
    return thread_budget()[0]


def set_num_threads(n: int | None, *, oversubscribe: bool = False) -> None:
    """Use ``n`` threads in nnkern's kernels (None: back to ``NNKERN_NUM_THREADS`` or the
    host's limits). It takes precedence over the host's limits (``OMP_NUM_THREADS``...).

    ``n`` above the cores this process may use is lowered to that number with an
    :class:`OversubscriptionWarning`, unless ``oversubscribe=True`` or the environment
    sets ``NNKERN_ALLOW_OVERSUBSCRIPTION=1``. Other libraries' thread pools (the BLAS) are
    left as they are."""
    global _num_threads, _generation
    if n is not None:
        n = _validate.integer("set_num_threads", "n", n, minimum=1, expected="a positive integer",
                              type_error=ValueError)
    _num_threads = n if n is None or oversubscribe else _lowered_to_cores(n, "set_num_threads")
    _generation += 1


# ---------------------------------------------------------------------------------------
# Concurrent callers
# ---------------------------------------------------------------------------------------

_active = 0  # Python threads inside a claim() now
_active_lock = threading.Lock()
_local = threading.local()  # per thread: depth of nested claims; the budget last read, when


def _current_budget(local) -> int:
    """The budget as this thread last read it, read again when set_num_threads() has run
    since or the reading is older than BUDGET_REREAD_S."""
    now = time.monotonic()
    if getattr(local, "generation", None) != _generation or now - local.read_at > BUDGET_REREAD_S:
        local.budget, local.read_at, local.generation = get_num_threads(), now, _generation
    return local.budget


class claim:
    """``with claim(work) as threads:`` one kernel call or training step. The calling
    thread counts as an active caller until the block ends (nested claims count once);
    ``threads`` is its share of the budget, or 1 when ``work`` (the largest product, in
    multiply-adds) is below :data:`SPLIT_MIN_MACS`, and never more than the enclosing
    claim's (a layer-by-layer step's kernels take the step's count). The host's limits are
    those read by this thread at most :data:`BUDGET_REREAD_S` ago."""

    __slots__ = ("work", "outermost", "enclosing")

    def __init__(self, work: int | None = None):
        self.work = work

    def __enter__(self) -> int:
        global _active
        local = _local
        depth = getattr(local, "depth", 0)
        self.outermost = depth == 0
        if self.outermost:
            with _active_lock:
                _active += 1
            local.cap = None
        local.depth = depth + 1
        self.enclosing = local.cap
        if self.work is not None and self.work < SPLIT_MIN_MACS:
            threads = 1
        else:
            threads = max(1, _current_budget(local) // max(1, _active))
        if self.enclosing is not None:
            threads = min(threads, self.enclosing)
        local.cap = threads
        return threads

    def __exit__(self, *exc) -> None:
        global _active
        local = _local
        local.depth -= 1
        local.cap = self.enclosing
        if self.outermost:
            with _active_lock:
                _active -= 1
