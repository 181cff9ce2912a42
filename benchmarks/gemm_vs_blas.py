"""nnkern's GEMM against NumPy's BLAS at the training shapes, each library timed in a
process of its own, and what calling the two alternately in one process costs.

    python benchmarks/gemm_vs_blas.py [--threads 1,2] [--dtype float32] [--json PATH]

Per thread count and shape: GFLOP/s of np.matmul (NumPy's BLAS), of the "cython" and of
the "numba" matmul (``nnkern.ops.matmul`` with the transposes as flags, into a
preallocated ``out``), each library in a fresh process: after a warm-up of WARMUP_S
seconds of calls (the second core's thread and clock take tens of milliseconds to come up
to speed), the median of REPEATS windows of at least WINDOW_S seconds each.

Then, in one process, the "cython" matmul of (64x784)@(784x256) timed alone and timed
with an np.matmul of the same shape before each call: a BLAS whose idle workers spin
after each call (OpenBLAS's do, for a while) takes the cores nnkern's threads need.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import numpy as np

# (label, m, k, n, trans_a, trans_b): op(a) is m x k, op(b) k x n
SHAPES = [
    ("x @ W1, 784-256 batch 64", 64, 784, 256, False, False),
    ("x.T @ dY1 (dW1)", 784, 64, 256, True, False),
    ("h1 @ W2, 256-128", 64, 256, 128, False, False),
    ("dY2 @ W2.T (dX2)", 64, 128, 256, False, True),
    ("h1.T @ dY2 (dW2)", 256, 64, 128, True, False),
    ("x @ W1, 784-100 batch 100", 100, 784, 100, False, False),
    ("x.T @ dY1, 784-100", 784, 100, 100, True, False),
    ("x @ W1, 784-800 batch 128", 128, 784, 800, False, False),
    ("h1 @ W2, 1024-1024 batch 256", 256, 1024, 1024, False, False),
    ("2048^3", 2048, 2048, 2048, False, False),
]
LIBRARIES = ("blas", "cython", "numba")
WARMUP_S, WINDOW_S, REPEATS = 0.3, 0.02, 9
INTERLEAVED_SHAPE = SHAPES[0]


def _operands(m, k, n, trans_a, trans_b, dtype, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b, np.empty((m, n), dtype)


def _product(library, m, k, n, trans_a, trans_b, dtype):
    """A no-argument callable computing the product with `library`."""
    a, b, out = _operands(m, k, n, trans_a, trans_b, dtype)
    if library == "blas":
        a_op, b_op = (a.T if trans_a else a), (b.T if trans_b else b)
        return lambda: np.matmul(a_op, b_op, out=out)
    from nnkern import ops

    return lambda: ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out, backend=library)


def _gflops(product, flops: float) -> float:
    """Median GFLOP/s over REPEATS windows, after WARMUP_S seconds of calls."""
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < WARMUP_S or calls < 3:
        product()
        calls += 1
    per_window = max(1, int(calls * WINDOW_S / (time.perf_counter() - start)))
    rates = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        for _ in range(per_window):
            product()
        rates.append(flops * per_window / (time.perf_counter() - start) / 1e9)
    return statistics.median(rates)


def measure_library(library: str, threads: int, dtype: str) -> dict:
    """{shape label: GFLOP/s} of one library (in the calling process)."""
    import nnkern
    import threadpoolctl

    nnkern.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads, user_api="blas")  # nnkern leaves the BLAS to its user
    if library != "blas" and library not in nnkern.available_backends():
        return {"unavailable": nnkern.unavailable_reason(library)}
    return {label: _gflops(_product(library, m, k, n, ta, tb, dtype), 2.0 * m * n * k)
            for label, m, k, n, ta, tb in SHAPES}


def measure_interleaved(threads: int, dtype: str) -> dict:
    """The cython matmul's GFLOP/s alone, and with an np.matmul before each call (only
    nnkern's calls timed)."""
    import nnkern
    import threadpoolctl

    nnkern.set_num_threads(threads)
    threadpoolctl.threadpool_limits(threads, user_api="blas")  # nnkern leaves the BLAS to its user
    _, m, k, n, ta, tb = INTERLEAVED_SHAPE
    ours = _product("cython", m, k, n, ta, tb, dtype)
    theirs = _product("blas", m, k, n, ta, tb, dtype)
    flops = 2.0 * m * n * k
    alone = _gflops(ours, flops)
    time.sleep(0.3)
    for _ in range(50):  # warm both
        theirs()
        ours()
    rates = []
    for _ in range(REPEATS):
        spent = 0.0
        for _ in range(20):
            theirs()
            start = time.perf_counter()
            ours()
            spent += time.perf_counter() - start
        rates.append(flops * 20 / spent / 1e9)
    return {"shape": INTERLEAVED_SHAPE[0], "alone_gflops": alone, "after_blas_gflops": statistics.median(rates)}


def _in_process_of_its_own(what: str, threads: int, dtype: str) -> dict:
    command = [sys.executable, __file__, "--worker", what, "--threads", str(threads), "--dtype", dtype]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2", help="thread counts, e.g. 1,2,4 (default: 1,2)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--json", metavar="PATH", help="write the results there as JSON")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    threads = [int(t) for t in str(args.threads).split(",")]
    if args.worker:  # one measurement in this process, as JSON on the last line
        what = (measure_interleaved(threads[0], args.dtype) if args.worker == "interleaved"
                else measure_library(args.worker, threads[0], args.dtype))
        print(json.dumps(what))
        return 0

    import nnkern.bench

    result = {"machine": nnkern.bench.machine_info(), "versions": nnkern.bench.versions(), "dtype": args.dtype,
              "by_threads": {}}
    print(f"{result['machine']['cpu']}, {result['machine']['cores']} cores; {args.dtype}; GFLOP/s, "
          f"each library in its own process (median of {REPEATS} windows after {WARMUP_S} s of warm-up)")
    for t in threads:
        found = {library: _in_process_of_its_own(library, t, args.dtype) for library in LIBRARIES}
        interleaved = _in_process_of_its_own("interleaved", t, args.dtype)
        result["by_threads"][t] = {"gflops": found, "interleaved": interleaved}
        print(f"\n{t} thread(s)")
        print(f"{'shape':32} {'m x k x n':>16} {'blas':>7} {'cython':>7} {'numba':>7} {'cython/blas':>12} "
              f"{'numba/blas':>11}")
        for label, m, k, n, ta, tb in SHAPES:
            rates = [found[lib].get(label) for lib in LIBRARIES]
            ratios = [f"{r / rates[0]:.2f}x" if r and rates[0] else "n/a" for r in rates[1:]]
            shape = f"{m}x{k}x{n}" + (" (A.T)" if ta else " (B.T)" if tb else "")
            print(f"{label:32} {shape:>16} " + " ".join(f"{r:7.1f}" if r else f"{'n/a':>7}" for r in rates)
                  + f" {ratios[0]:>12} {ratios[1]:>11}")
        print(f"cython {interleaved['shape']}: {interleaved['alone_gflops']:.1f} GFLOP/s alone, "
              f"{interleaved['after_blas_gflops']:.1f} with an np.matmul before each call "
              f"({interleaved['after_blas_gflops'] / interleaved['alone_gflops']:.2f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
