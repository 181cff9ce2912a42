"""nnkern.sklearn fits with each epoch in one compiled call, against batch by batch.

    python benchmarks/epoch_call.py [--rounds 5] [--fits 7] [--threads 1]

On the "cython" backend an unweighted estimator fit on a dense X runs each epoch in one
call of the engine (``step.epochs``: the batches gathered, scikit-learn's L2 penalty summed
and every step taken with the GIL released); batch by batch, Python runs between the
steps. Both contenders fit the same networks on the same data (digits, 1,437 rows, (64,)
and (128,) hidden, adam and sgd, 200 epochs: ~1,400 steps of batch 200; and 784-100-10 on
20,000 dense rows in [-1, 1], 2 epochs of 100 steps), each in a process of its own (the
batch-by-batch one with ``step.epochs`` removed), the rounds alternated; a round's figure is
the median of ``--fits`` fits, the table's the median over the rounds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

CASES = [("digits", (64,), "adam"), ("digits", (64,), "sgd"), ("digits", (128,), "adam"),
         ("dense784", (100,), "adam")]


def measure(contender: str, fits: int, threads: int) -> dict:
    """Median seconds per fit of every case, in this process."""
    import warnings

    import numpy as np
    from sklearn.datasets import load_digits

    import nnkern
    from nnkern.sklearn import MLPClassifier
    from nnkern.training import steps

    warnings.simplefilter("ignore")  # ConvergenceWarning: the epochs are fixed on purpose
    nnkern.set_num_threads(threads)
    if contender == "batch-by-batch":
        build = steps.FusedStep.__init__

        def without_epochs(self, function, backend):
            build(self, function, backend)
            self.epochs = None

        steps.FusedStep.__init__ = without_epochs
    x, y = load_digits(return_X_y=True)
    data = {"digits": ((x[:1437] / 16.0).astype(np.float32), y[:1437], 200)}
    rng = np.random.default_rng(0)
    data["dense784"] = (rng.uniform(-1, 1, (20_000, 784)).astype(np.float32), rng.integers(0, 10, 20_000), 2)
    result = {}
    for name, hidden, solver in CASES:
        X, labels, epochs = data[name]
        times = []
        for _ in range(fits + 1):  # the first fit loads the kernels: not counted
            estimator = MLPClassifier(hidden, solver=solver, max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1,
                                      random_state=0, backend="cython")
            start = time.perf_counter()
            estimator.fit(X, labels)
            times.append(time.perf_counter() - start)
        result[f"{name} {hidden} {solver}"] = statistics.median(times[1:])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fits", type=int, default=7, help="fits per case and process (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.fits, args.threads)))
        return 0
    contenders = ("one call per epoch", "batch-by-batch")
    runs = {contender: [] for contender in contenders}
    for _ in range(args.rounds):
        for contender in contenders:
            done = subprocess.run([sys.executable, __file__, "--fits", str(args.fits), "--threads", str(args.threads),
                                   "--worker", contender], capture_output=True, text=True, check=True)
            runs[contender].append(json.loads(done.stdout.splitlines()[-1]))
    print(f"nnkern.sklearn MLPClassifier fits on cython, {args.threads} thread(s); median of {args.rounds} rounds, "
          f"each the median of {args.fits} fits in a process of its own")
    print(f"{'case':>28} {'one call ms':>12} {'batch by batch ms':>18} {'speed-up':>9}")
    for case in runs[contenders[0]][0]:
        whole, batched = (statistics.median(run[case] for run in runs[contender]) for contender in contenders)
        print(f"{case:>28} {1e3 * whole:>12.1f} {1e3 * batched:>18.1f} {batched / whole:>8.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
