"""Set-up of the benchmark suite (``pytest benchmarks/``; see README.md here): one thread
count for every pool, extra markers, and nnkern's machine facts in the JSON."""

from __future__ import annotations

import numpy as np
import pytest
from bench_support import CONTENDERS, SKIPPED, THREADS, torch

from nnkern import bench


def pytest_configure(config):
    config.addinivalue_line("markers", "large: big problems (2048^3 GEMM); skip with -m 'not large'")
    config.addinivalue_line("markers", "training: one MNIST epoch per contender; skip with -m 'not training'")
    bench.set_threads(THREADS)


def pytest_report_header(config):
    skipped = "; ".join(f"{name}: {reason}" for name, reason in SKIPPED.items()) or "none"
    return [
        f"nnkern benchmark contenders: {CONTENDERS} + peers (np.matmul, torch: {torch is not None})",
        f"threads: {THREADS} (nnkern, BLAS, PyTorch); skipped backends: {skipped}",
    ]


def pytest_benchmark_update_machine_info(config, machine_info):
    info = bench.machine_info()
    machine_info["nnkern"] = {
        "threads": THREADS,
        "cpu_model": info["cpu"],
        "cores": info["cores"],
        "simd": info["simd"],
        "blas": info["blas"],
        "versions": bench.versions(),
        "backends": CONTENDERS,
        "skipped": SKIPPED,
    }


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
