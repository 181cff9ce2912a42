"""Where a second thread starts to pay: fits of small networks on 1 and 2 threads.

    python benchmarks/small_fit_threads.py [--rounds 5] [--backends cython,numba] [--epochs 20]
                                           [--networks 64,128,256,512,1024] [--json PATH]

Each fit is nnkern.sklearn's MLPClassifier on scikit-learn's digits (1797 x 64, the first
1437 rows: a 5-fold CV split's training part), one hidden layer of each width, batch 200,
a fixed number of epochs, in a process of its own, rounds interleaved. The engine's
small-work rule (nnkern._threads.SPLIT_MIN_MACS) is switched off in the worker, so that the
thread count asked is the one used; the table gives, per network, the step's largest product
(rows x fan_in x fan_out, the quantity that rule compares) and the 2-thread fit's speed-up.
SPLIT_MIN_MACS is the smallest product measured where 2 threads are faster.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

BATCH = 200
ROWS = 1437


def measure(width: int, backend: str, threads: int, epochs: int, repeats: int) -> dict:
    """Median seconds per fit over ``repeats`` fits after one warm-up, in this process."""
    import numpy as np
    from sklearn.datasets import load_digits

    import nnkern
    from nnkern import _threads
    from nnkern.sklearn import MLPClassifier

    os.environ["NNKERN_PLAN"] = "off"  # the fixed rule, not a plan timed on the first steps
    _threads.SPLIT_MIN_MACS = 0
    nnkern.set_num_threads(threads)
    x, y = load_digits(return_X_y=True)
    x, y = (x[:ROWS] / 16.0).astype(np.float32), y[:ROWS]

    def fit():
        MLPClassifier((width,), max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1, batch_size=BATCH,
                      random_state=0, backend=backend).fit(x, y)

    import warnings

    warnings.simplefilter("ignore")  # ConvergenceWarning: the epochs are fixed on purpose
    fit()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit()
        times.append(time.perf_counter() - start)
    return {"fit_s": statistics.median(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="fits per process (median)")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--backends", default="cython,numba")
    parser.add_argument("--networks", default="16,32,64,128,256,512,1024", help="hidden widths")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        width, backend, threads = args.worker
        print(json.dumps(measure(int(width), backend, int(threads), args.epochs, args.repeats)))
        return 0

    widths = [int(w) for w in args.networks.split(",")]
    backends = args.backends.split(",")
    runs = {}
    for _ in range(args.rounds):  # rounds interleaved: a slow minute hurts every measurement alike
        for width in widths:
            for backend in backends:
                for threads in (1, 2):
                    done = subprocess.run([sys.executable, __file__, "--epochs", str(args.epochs), "--repeats",
                                           str(args.repeats), "--worker", str(width), backend, str(threads)],
                                          capture_output=True, text=True, check=True)
                    runs.setdefault((width, backend, threads), []).append(json.loads(done.stdout.splitlines()[-1]))
    print(f"digits, {ROWS} rows, batch {BATCH}, {args.epochs} epochs; median of {args.rounds} rounds "
          f"(each the median of {args.repeats} fits in its own process)")
    print(f"{'network':>12} {'largest product':>16} {'backend':>8} {'1 thread ms':>12} {'2 threads ms':>13} "
          f"{'speed-up':>9}")
    table = []
    for width in widths:
        product = BATCH * 64 * width  # the first layer's product; the 10-wide output's is smaller
        for backend in backends:
            one, two = (statistics.median(r["fit_s"] for r in runs[width, backend, t]) for t in (1, 2))
            table.append({"hidden": width, "largest_product": product, "backend": backend, "fit_1_s": one,
                          "fit_2_s": two, "speedup": one / two})
            print(f"{'64-' + str(width) + '-10':>12} {product:>16,} {backend:>8} {one * 1e3:>12.1f} "
                  f"{two * 1e3:>13.1f} {one / two:>8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(table, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
