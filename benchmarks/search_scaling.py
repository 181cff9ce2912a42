"""A hyperparameter search over nnkern estimators, sequential and on 2 workers.

    python benchmarks/search_scaling.py [--rounds 5] [--repeats 3] [--grid small|large] [--epochs 200]
                                        [--configs n_jobs=1,loky,threading,dask-2x1,dask-1x2]
                                        [--fixed-work] [--cold] [--json PATH]

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

``--fixed-work`` runs every configuration a second time, in the same round, on the search
of a stand-in estimator (``FixedWork``) whose fits are pure compiled work of exactly the
seconds nnkern's sequential fits took in that round (the same parameters), releasing the
GIL, with no memory traffic, Python or threads of their own: its speed-up is what the
configuration's own costs (starting tasks, moving them and their results, its other
processes' share of the cores) leave of the ideal 2x, a ceiling for any estimator whose fits
last that long. It needs n_jobs=1 first in ``--configs``.

``--cold`` times each process's first search instead, with no warm-up: what a user's first
search in a fresh process costs, the loky or Dask workers importing Python, scikit-learn
and nnkern and loading the kernels on their first task (a Dask cluster is started before
the clock all the same).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import statistics
import subprocess
import sys
import time

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin

GRIDS = {"small": [(64,), (96,), (128,)], "large": [(512,), (768,), (1024,)]}
CONFIGS = ("n_jobs=1", "loky", "threading", "dask-2x1", "dask-1x2")
EPOCHS = 200
ALPHAS = [1e-4, 1e-2]


def _fit_key(hidden_layer_sizes, alpha) -> str:
    return f"{tuple(hidden_layer_sizes)} {alpha!r}"


def _pbkdf2_rounds(rounds: int) -> None:
    """``rounds`` rounds of PBKDF2-HMAC-SHA256: compiled work that releases the GIL and
    touches a few hundred bytes."""
    hashlib.pbkdf2_hmac("sha256", b"nnkern", b"fixed-work", max(int(rounds), 1))


def pbkdf2_rounds_per_second() -> float:
    """This process's PBKDF2 rounds per second, the best of three ~20 ms runs."""
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        _pbkdf2_rounds(50_000)
        best = max(best, 50_000 / (time.perf_counter() - start))
    return best


class FixedWork(ClassifierMixin, BaseEstimator):
    """A classifier whose fit is ``fit_seconds[key]`` seconds of compiled work, cloned,
    fitted and scored by GridSearchCV like nnkern's (it predicts class 0)."""

    def __init__(self, hidden_layer_sizes=(64,), alpha=1e-4, fit_seconds=None, rounds_per_second=1.0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.fit_seconds = fit_seconds
        self.rounds_per_second = rounds_per_second

    def fit(self, X, y):
        _pbkdf2_rounds(self.rounds_per_second * self.fit_seconds[_fit_key(self.hidden_layer_sizes, self.alpha)])
        self.classes_ = np.unique(y)
        return self

    def predict(self, X):
        return np.zeros(len(X), dtype=self.classes_.dtype)


def measure(config: str, grid: str, repeats: int, epochs: int, fit_seconds: dict | None = None,
            cold: bool = False) -> dict:
    """Median seconds per search over ``repeats`` searches after a warm-up (``cold``: the
    first search alone), in this process; the searched estimator is nnkern's MLPClassifier,
    or ``FixedWork`` with ``fit_seconds``."""
    import warnings

    import joblib
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV

    import nnkern
    from nnkern.sklearn import MLPClassifier

    warnings.simplefilter("ignore")  # ConvergenceWarning: the epochs are fixed on purpose
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    param_grid = {"hidden_layer_sizes": GRIDS[grid], "alpha": ALPHAS}
    if fit_seconds is None:
        estimator = MLPClassifier(max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1, random_state=0)
    else:
        estimator = FixedWork(fit_seconds=fit_seconds, rounds_per_second=pbkdf2_rounds_per_second())
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
        """Each fit's seconds (mean over the folds, as scikit-learn times them in the workers),
        by its parameters."""
        done = GridSearchCV(estimator, param_grid, cv=2, n_jobs=n_jobs, refit=False).fit(x, y)
        return {_fit_key(params["hidden_layer_sizes"], params["alpha"]): float(seconds)
                for params, seconds in zip(done.cv_results_["params"], done.cv_results_["mean_fit_time"])}

    try:
        with parallel:
            if not cold:
                search()  # warm-up: worker processes started, kernels loaded
            times, fits = [], []
            for _ in range(1 if cold else repeats):
                start = time.perf_counter()
                fits.append(search())
                times.append(time.perf_counter() - start)
    finally:
        if client is not None:
            client.close()
            cluster.close()
    fit_seconds = {key: statistics.median(run[key] for run in fits) for key in fits[0]}
    return {"search_s": statistics.median(times), "fits_s": 2 * sum(fit_seconds.values()),
            "fit_seconds": fit_seconds, "budget": list(nnkern.thread_budget())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3, help="searches per process (median)")
    parser.add_argument("--grid", default="small", choices=sorted(GRIDS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--epochs", type=int, default=EPOCHS, help="epochs per fit")
    parser.add_argument("--fixed-work", action="store_true",
                        help="also run each configuration on FixedWork fits of n_jobs=1's seconds (a ceiling)")
    parser.add_argument("--cold", action="store_true", help="time each process's first search, no warm-up")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--fit-seconds", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fit_seconds = json.loads(args.fit_seconds) if args.fit_seconds else None
        print(json.dumps(measure(args.worker, args.grid, args.repeats, args.epochs, fit_seconds, args.cold)))
        return 0

    configs = args.configs.split(",")
    if args.fixed_work and configs[0] != "n_jobs=1":
        parser.error("--fixed-work takes its fits' seconds from n_jobs=1: list it first in --configs")

    def run(config, fit_seconds=None):
        command = [sys.executable, __file__, "--grid", args.grid, "--repeats", str(args.repeats),
                   "--epochs", str(args.epochs), "--worker", config] + (["--cold"] if args.cold else [])
        if fit_seconds is not None:
            command += ["--fit-seconds", json.dumps(fit_seconds)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        return json.loads(done.stdout.splitlines()[-1])

    runs, fixed_runs = {}, {}
    for _ in range(args.rounds):  # rounds interleaved: a slow minute hurts every configuration alike
        for config in configs:
            runs.setdefault(config, []).append(run(config))
        if args.fixed_work:
            sequential_fits = runs[configs[0]][-1]["fit_seconds"]
            for config in configs:
                fixed_runs.setdefault(config, []).append(run(config, sequential_fits))
    widths = ", ".join(str(w) for w in GRIDS[args.grid])
    print(f"GridSearchCV of 12 fits (hidden {widths}; alpha 1e-4, 1e-2; 2 folds; {args.epochs} epochs) on digits; "
          f"median of {args.rounds} rounds, each " + ("the first search of a process of its own (cold)" if args.cold else
                                                      f"the median of {args.repeats} searches in a process of its own"))
    fixed_header = f" {'fixed-work':>10} {'nnkern/it':>9}" if args.fixed_work else ""
    print(f"{'configuration':>14} {'search s':>9} {'speed-up':>9} {'fits s':>7}{fixed_header}   nnkern budget in the parent")
    base = statistics.median(r["search_s"] for r in runs[configs[0]])
    fixed_base = statistics.median(r["search_s"] for r in fixed_runs[configs[0]]) if args.fixed_work else None
    table = []
    for config in configs:
        seconds = statistics.median(r["search_s"] for r in runs[config])
        fits = statistics.median(r["fits_s"] for r in runs[config])
        budget = runs[config][0]["budget"]
        row = {"config": config, "search_s": seconds, "speedup": base / seconds, "fits_s": fits, "runs": runs[config]}
        fixed_text = ""
        if args.fixed_work:
            fixed_speedup = fixed_base / statistics.median(r["search_s"] for r in fixed_runs[config])
            row.update(fixed_work_speedup=fixed_speedup, fixed_work_runs=fixed_runs[config])
            fixed_text = f" {fixed_speedup:>9.2f}x {base / seconds / fixed_speedup:>8.0%}"
        table.append(row)
        print(f"{config:>14} {seconds:>9.3f} {base / seconds:>8.2f}x {fits:>7.3f}{fixed_text}   {budget[0]} (from {budget[1]})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"grid": args.grid, "epochs": args.epochs, "rows": table}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
