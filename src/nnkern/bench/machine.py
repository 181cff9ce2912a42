"""Who runs, on what machine: the backends worth timing, PyTorch, the CPU, the versions, the
thread counts and this machine's GEMM peak."""

from __future__ import annotations

import contextlib
import importlib.metadata
import math
import os
import platform
import sys
import time

import numpy as np

import nnkern
import threadpoolctl

from .. import ops
from .._backend import backend_module
from .._threads import default_num_threads, openmp_defaults
from ..backends import BACKENDS
from .networks import DTYPE

REFERENCE = "numpy"  # every ratio is taken to it
TORCH = "torch"  # the peer contender


def _cuda_is_simulated() -> bool:
    if "numba" not in sys.modules:
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def benchmark_backends(requested=None) -> tuple[list[str], dict[str, str]]:
    """The nnkern backends worth timing here, reference first, and why the others are not.

    "cuda" counts only on a real GPU: under Numba's CUDA simulator it is usable but its
    timings mean nothing. ``requested`` (names) narrows the list; the reference is always
    kept, since every ratio is taken to it.
    """
    if requested is not None:
        unknown = sorted(set(requested) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; nnkern knows {', '.join(BACKENDS)}")
    timed, skipped = [], {}
    for name in BACKENDS:
        if requested is not None and name != REFERENCE and name not in requested:
            continue
        reason = nnkern.unavailable_reason(name)
        if reason is None and name == "cuda" and _cuda_is_simulated():
            reason = "CUDA simulator (NUMBA_ENABLE_CUDASIM) is on: no real GPU to time"
        if reason is None:
            timed.append(name)
        else:
            skipped[name] = reason
    return timed, skipped


def import_torch():
    """PyTorch, or None when it cannot be imported. Imported with its own OpenMP defaults
    (its libgomp reads them when it loads), not the spin count nnkern sets for its own."""
    try:
        with openmp_defaults():
            import torch
    except ImportError:
        return None
    return torch


def machine_info() -> dict:
    """CPU model, cores, SIMD flags and the BLAS NumPy calls."""
    cpu_model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    cpu_model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    simd = [f for f in ("sse2", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                        "avx512_bf16", "amx_tile", "neon", "asimd", "sve") if f in flags]
    from threadpoolctl import threadpool_info

    blas = [
        {k: pool.get(k) for k in ("internal_api", "version", "architecture", "threading_layer")}
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]
    return {
        "cpu": cpu_model,
        "cores": default_num_threads(),
        "logical_cpus": os.cpu_count(),
        "simd": simd,
        "platform": platform.platform(),
        "blas": blas,
        "nnkern_gemm": _cython_gemm_variant(),
    }


def _cython_gemm_variant() -> str | None:
    """How the cython backend's GEMM runs here ("AVX-512 tiles, native build ..."), or None
    where the backend is not built."""
    if nnkern.unavailable_reason("cython") is not None:
        return None
    return backend_module("cython").gemm_variant()


def versions() -> dict:
    """Versions of Python and of every package that takes part."""
    found = {"python": platform.python_version(), "nnkern": nnkern.__version__}
    for package in ("numpy", "numba", "numba-cuda", "cython", "threadpoolctl", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def set_threads(threads: int, *, with_torch: bool = True) -> None:
    """The same thread count for nnkern's pools (OpenMP, Numba), the BLAS the NumPy
    reference calls (nnkern leaves the BLAS to its user: this process limits it for good)
    and, ``with_torch``, PyTorch's (importing PyTorch loads its own OpenMP runtime: a
    process that does not time PyTorch leaves it out)."""
    nnkern.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads, user_api="blas")
    torch = import_torch() if with_torch else None
    if torch is not None:
        torch.set_num_threads(threads)


def _best_gflops(product, size: int, repeats: int) -> float:
    product()  # first touch of the pages and of the threads
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def measure_sgemm_peak(size: int = 2048, repeats: int = 3, dtype=DTYPE) -> dict:
    """This machine's GEMM peak for ``dtype`` with the current thread count: the best of
    ``repeats`` products of ``size``² matrices by NumPy's BLAS and by nnkern's own GEMM (the
    fastest compiled backend here), whichever is faster. Each is reported too: on some CPUs
    NumPy's BLAS runs a kernel for an older instruction set."""
    dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty((size, size), dtype=dtype)
    found = {"blas_gflops": _best_gflops(lambda: np.matmul(a, b, out=out), size, repeats)}
    backend = next((name for name in ("cython", "numba") if name in nnkern.available_backends()), None)
    if backend is not None:
        wait_for_idle_pools()  # the BLAS's idle workers stop spinning first
        found["nnkern_gflops"] = _best_gflops(lambda: ops.matmul(a, b, out=out, backend=backend),
                                              size, repeats)
        found["nnkern_backend"] = backend
    best_of = max((k for k in found if k.endswith("_gflops")), key=found.get)
    return {"gflops": found[best_of], "by": best_of.removesuffix("_gflops"), **found, "size": size,
            "repeats": repeats, "dtype": dtype.name}


# Untimed pause before each timed epoch. The previous contender's idle workers keep spinning
# after its last call (OpenBLAS's for ~0.1 s, libgomp's default ~5 ms) and steal the cores of
# whoever runs next: measured on 2 cores, a cython epoch right after OpenBLAS calls took
# 185-200 ms, after a 0.3 s pause 136-139 ms.
POOL_IDLE_PAUSE_S = 0.3


def wait_for_idle_pools() -> None:
    """An untimed pause of ``POOL_IDLE_PAUSE_S``: the thread pools used last go idle."""
    time.sleep(POOL_IDLE_PAUSE_S)
