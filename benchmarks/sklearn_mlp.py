"""nnkern.sklearn's MLP estimators against scikit-learn's, as a scikit-learn user would run
them: scikit-learn's bundled data sets (iris, wine, breast_cancer, digits: classifiers;
diabetes: regressor) at default parameters, and MNIST with fixed epochs, per solver
("sgd", "adam", "lbfgs"). Each fit is timed; the score (accuracy or R²) is taken on a
held-out quarter; reported are the medians over the seeds (each seed: its own split and
random_state, both libraries on the same one, interleaved). Every fit runs in a process of
its own (the two libraries' thread pools never share one), one library after the other.

    python benchmarks/sklearn_mlp.py [--datasets iris,wine,breast_cancer,digits,diabetes,mnist]
        [--solvers sgd,adam,lbfgs] [--seeds 5] [--mnist-limit N] [--mnist-epochs E]
        [--mnist-networks 100 256-128-64-20] [--mnist-inputs unit,dense] [--json PATH]

Bundled data sets: standardised features (StandardScaler fitted on the training part),
default hyper-parameters (max_iter=200, scikit-learn's stopping rule) and the epochs each
library ran (``n_iter_``). MNIST: float32 pixels / 255 ("unit": 81% zeros) or
(pixels / 255 - 0.5) / 0.5 ("dense": no zeros), the networks given (hidden widths), exactly ``--mnist-epochs`` epochs (``n_iter_no_change=np.inf``; for lbfgs that
many iterations), so the times compare equal work.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import warnings

import numpy as np

BUNDLED = ("iris", "wine", "breast_cancer", "digits", "diabetes")
LIBRARIES = ("scikit-learn", "nnkern")


def load(name: str, mnist_limit: int, mnist_inputs: str = "unit"):
    """(X, y, is_classification) of a data set."""
    if name == "mnist":
        from nnkern.data import load_mnist

        (x, y), (x_test, y_test) = load_mnist()
        x = np.concatenate([x, x_test])[:mnist_limit]
        y = np.concatenate([y, y_test])[:mnist_limit]
        x = x.astype(np.float32) / (255.0 if x.max() > 1 else 1.0)
        return (x if mnist_inputs == "unit" else (x - 0.5) / 0.5), y, True
    from sklearn import datasets

    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return X, y, name != "diabetes"


def estimator(library: str, classification: bool, **params):
    if library == "nnkern":
        from nnkern.sklearn import MLPClassifier, MLPRegressor
    else:
        from sklearn.neural_network import MLPClassifier, MLPRegressor
    return (MLPClassifier if classification else MLPRegressor)(**params)


def one_fit(library, classification, params, X_train, y_train, X_test, y_test) -> dict:
    model = estimator(library, classification, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter is expected here
        started = time.perf_counter()
        model.fit(X_train, y_train)
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "score": float(model.score(X_test, y_test)), "epochs": int(model.n_iter_)}


def fit_in_process(job: dict) -> dict:
    """One fit of ``job`` (library, data set, network, solver, seed...) in this process."""
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    X, y, classification = load(job["dataset"], job["mnist_limit"], job["mnist_inputs"])
    params = {"hidden_layer_sizes": tuple(job["hidden"]), "solver": job["solver"], "random_state": job["seed"]}
    if job["dataset"] == "mnist":
        params.update(max_iter=job["mnist_epochs"], n_iter_no_change=np.inf, tol=0.0)
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=job["seed"], stratify=y if classification else None)
    if job["dataset"] != "mnist":
        scaler = StandardScaler().fit(X_train)
        X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    return one_fit(job["library"], classification, params, X_train, y_train, X_test, y_test)


def fit_in_subprocess(job: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], check=False,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the fit {job} failed:\n{done.stderr}")
    return json.loads(done.stdout.splitlines()[-1])


def runs(datasets, solvers, seeds, mnist_limit, mnist_epochs, mnist_networks, mnist_inputs):
    """One row per (data set, network, solver, library): the medians over the seeds."""
    rows = []
    for name in datasets:
        inputs = mnist_inputs if name == "mnist" else ["standardised"]
        networks = mnist_networks if name == "mnist" else [(100,)]
        for scaling in inputs:
            for hidden in networks:
                for solver in solvers:
                    results = {library: [] for library in LIBRARIES}
                    for seed in range(seeds):
                        for library in LIBRARIES:  # interleaved, seed after seed
                            job = {"library": library, "dataset": name, "hidden": list(hidden), "solver": solver,
                                   "seed": seed, "mnist_limit": mnist_limit, "mnist_epochs": mnist_epochs,
                                   "mnist_inputs": scaling}
                            results[library].append(fit_in_subprocess(job))
                    for library in LIBRARIES:
                        rows.append({
                            "dataset": name, "inputs": scaling, "hidden": list(hidden), "solver": solver,
                            "library": library, "seeds": seeds,
                            **{f"median_{key}": statistics.median(r[key] for r in results[library])
                               for key in ("score", "seconds", "epochs")},
                            "runs": results[library],
                        })
    return rows


def table(rows) -> str:
    """A Markdown table: per data set, network and solver, both libraries side by side."""
    lines = [("| data set | inputs | network | solver | score sklearn | score nnkern | epochs sklearn | epochs nnkern "
              "| fit s sklearn | fit s nnkern | speed-up |"), "|---|---|---|---|---|---|---|---|---|---|---|"]
    for theirs, ours in zip(rows[0::2], rows[1::2]):
        lines.append(
            f"| {theirs['dataset']} | {theirs['inputs']} | {'-'.join(map(str, theirs['hidden']))} | {theirs['solver']} "
            f"| {theirs['median_score']:.3f} | {ours['median_score']:.3f} "
            f"| {theirs['median_epochs']:g} | {ours['median_epochs']:g} "
            f"| {theirs['median_seconds']:.3f} | {ours['median_seconds']:.3f} "
            f"| {theirs['median_seconds'] / ours['median_seconds']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join((*BUNDLED, "mnist")))
    parser.add_argument("--solvers", default="sgd,adam,lbfgs")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per data set and solver (default: 5)")
    parser.add_argument("--mnist-limit", type=int, default=70000, help="MNIST images used (default: all 70000)")
    parser.add_argument("--mnist-epochs", type=int, default=5, help="epochs (lbfgs: iterations) on MNIST")
    parser.add_argument("--mnist-networks", nargs="+", default=["100", "256-128-64-20"],
                        help="hidden widths of the MNIST networks, e.g. 100 256-128-64-20")
    parser.add_argument("--mnist-inputs", default="unit,dense",
                        help="MNIST pixel scalings: unit (/255, 81%% zeros), dense ((x/255-0.5)/0.5)")
    parser.add_argument("--json", metavar="PATH", help="write the rows there")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(fit_in_process(json.loads(args.worker))))
        return 0
    datasets = args.datasets.split(",")
    unknown = set(datasets) - {*BUNDLED, "mnist"}
    if unknown:
        parser.error(f"unknown data sets {sorted(unknown)}; choose from {', '.join((*BUNDLED, 'mnist'))}")
    solvers = args.solvers.split(",")
    if set(solvers) - {"sgd", "adam", "lbfgs"}:
        parser.error("solvers are sgd, adam and lbfgs")
    networks = [tuple(int(width) for width in spec.split("-")) for spec in args.mnist_networks]
    mnist_inputs = args.mnist_inputs.split(",")
    if set(mnist_inputs) - {"unit", "dense"}:
        parser.error("--mnist-inputs are unit and dense")

    import sklearn

    import nnkern
    from nnkern.bench.machine import machine_info, measure_sgemm_peak

    machine, peak = machine_info(), measure_sgemm_peak()
    rows = runs(datasets, solvers, args.seeds, args.mnist_limit, args.mnist_epochs, networks, mnist_inputs)
    print(f"scikit-learn {sklearn.__version__} against nnkern {nnkern.__version__} (backend {nnkern.get_backend()}, "
          f"{nnkern.get_num_threads()} thread(s)); medians over {args.seeds} seed(s), each fit in its own process; "
          f"{machine['cpu']}, {machine['cores']} cores, {'/'.join(machine['simd'])}; 2048^3 sgemm peak "
          f"{peak['gflops']:.0f} GFLOP/s ({peak['by']}; BLAS {peak['blas_gflops']:.0f})")
    print(table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "machine": machine, "sgemm_peak": peak, "versions": {"nnkern": nnkern.__version__, "scikit-learn": sklearn.__version__,
                                                  "numpy": np.__version__}}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
