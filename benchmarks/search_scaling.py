"""A hyperparameter search over nnkern estimators, sequential and on 2 workers.

    python benchmarks/search_scaling.py [--rounds 5] [--repeats 3] [--grid small|large] [--epochs 200]
                                        [--configs n_jobs=1,loky,threading,dask-2x1,dask-1x2]
                                        [--json PATH]

The search: scikit-learn's GridSearchCV (12 fits: 3 widths x 2 alphas x 2 folds, no refit)
of nnkern.sklearn's MLPClassifier on scikit-learn's digits, a fixed number of epochs each
(default 200: scikit-learn's max_iter, which its own estimator reaches on these fits at
default settings); "small" grids widths (64,), (96,), (128,), "large" (512,), (768,),
(1024,). Configurations:

  n_jobs=1    the fits one after another in the process
  loky        n_jobs=2, joblib's default backend (2 worker processes)
  threading   n_jobs=2, joblib's threading backend (2 Python threads in the process)
  dask-2x1    n_jobs=-1 on joblib's "dask" backend, a LocalCluster of 2 one-thread workers
  dask-1x2    the same on 1 worker process of 2 threads

nnkern's thread budget is left to the host in every configuration (no set_num_threads, no
NNKERN_NUM_THREADS): what a user gets. Each configuration runs in a process of its own
(its pools, workers and cluster started before the clock and warmed by one search), the
rounds interleaved; a round's figure is the median of ``--repeats`` searches, the table's
the median over the rounds and each configuration's speed-up over n_jobs=1. "fits s" adds up
the 12 fits' own times (scikit-learn's ``mean_fit_time``, taken where they ran): above
n_jobs=1's, the workers' fits ran slower (they shared the cores with more processes).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time

GRIDS = {"small": [(64,), (96,), (128,)], "large": [(512,), (768,), (1024,)]}
CONFIGS = ("n_jobs=1", "loky", "threading", "dask-2x1", "dask-1x2")
EPOCHS = 200


def measure(config: str, grid: str, repeats: int, epochs: int) -> dict:
    """Median seconds per search over ``repeats`` searches after a warm-up, in this process."""
    import warnings

    import joblib
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV

    import nnkern
    from nnkern.sklearn import MLPClassifier

    warnings.simplefilter("ignore")  # ConvergenceWarning: the epochs are fixed on purpose
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    param_grid = {"hidden_layer_sizes": GRIDS[grid], "alpha": [1e-4, 1e-2]}
    estimator = MLPClassifier(max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1, random_state=0)
    n_jobs, parallel, cluster, client = 1, contextlib.nullcontext(), None, None
    if config == "loky":
        n_jobs = 2
    elif config == "threading":
        n_jobs, parallel = 2, joblib.parallel_config(backend="threading")
    elif config.startswith("dask-"):
        from dask.distributed import Client, LocalCluster

        workers, threads = (int(n) for n in config[len("dask-"):].split("x"))
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
        n_jobs, parallel = -1, joblib.parallel_config(backend="dask")
    elif config != "n_jobs=1":
        raise ValueError(f"unknown configuration {config!r}")

    def search():
        """The search's seconds in its fits (as scikit-learn times them in the workers)."""
        done = GridSearchCV(estimator, param_grid, cv=2, n_jobs=n_jobs, refit=False).fit(x, y)
        return 2 * float(np.sum(done.cv_results_["mean_fit_time"]))

    try:
        with parallel:
            search()  # warm-up: worker processes started, kernels loaded
            times, fit_times = [], []
            for _ in range(repeats):
                start = time.perf_counter()
                fit_times.append(search())
                times.append(time.perf_counter() - start)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    return {"search_s": statistics.median(times), "fits_s": statistics.median(fit_times),
            "budget": list(nnkern.thread_budget())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="searches per process (median)")
    parser.add_argument("--grid", default="small", choices=sorted(GRIDS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per fit")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker, args.grid, args.repeats, args.epochs)))
        return 0

    configs = args.configs.split(",")
    runs = {}
    for _ in range(args.rounds):  # rounds interleaved: a slow minute hurts every configuration alike
        for config in configs:
            done = subprocess.run([sys.executable, __file__, "--grid", args.grid, "--repeats", str(args.repeats),
                                   "--epochs", str(args.epochs), "--worker", config], capture_output=True, text=True, check=True)
            runs.setdefault(config, []).append(json.loads(done.stdout.splitlines()[-1]))
    widths = ", ".join(str(w) for w in GRIDS[args.grid])
    print(f"GridSearchCV of 12 fits (hidden {widths}; alpha 1e-4, 1e-2; 2 folds; {args.epochs} epochs) on digits; "
          f"median of {args.rounds} rounds, each the median of {args.repeats} searches in a process of its own")
    print(f"{'configuration':>14} {'search s':>9} {'speed-up':>9} {'fits s':>7}   nnkern budget in the parent")
    base = statistics.median(r["search_s"] for r in runs[configs[0]])
    table = []
    for config in configs:
        seconds = statistics.median(r["search_s"] for r in runs[config])
        fits = statistics.median(r["fits_s"] for r in runs[config])
        budget = runs[config][0]["budget"]
        table.append({"config": config, "search_s": seconds, "speedup": base / seconds, "fits_s": fits,
                      "runs": runs[config]})
        print(f"{config:>14} {seconds:>9.3f} {base / seconds:>8.2f}x {fits:>7.3f}   {budget[0]} (from {budget[1]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"grid": args.grid, "epochs": args.epochs, "rows": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
