"""Hyperparameter searches over nnkern estimators on a Dask cluster (README "Scaling out").

    python examples/dask_search.py                      # a LocalCluster of 2 one-thread workers
    python examples/dask_search.py --scheduler tcp://HOST:8786   # an existing cluster
    python examples/dask_search.py --workers 1 --threads-per-worker 2

Two ways, on scikit-learn's digits:

1. ``grid_search``: scikit-learn's GridSearchCV, its fits spread over the cluster's workers
   by joblib's "dask" backend (``joblib.parallel_config(backend="dask")``). Each fit runs
   in a worker; nnkern there uses the worker's share of the cores (Dask's worker processes
   set ``OMP_NUM_THREADS``, which nnkern's thread budget follows).
2. ``incremental``: dask-ml's ``Incremental`` trains one estimator by ``partial_fit`` over
   the blocks of a dask array, one block at a time: data larger than one machine's memory,
   read block by block. (dask-ml's searches over ``partial_fit``, ``HyperbandSearchCV``
   and the like, fail with dask >= 2025.3 in dask-ml 2025.1 for every estimator:
   "Attempting to use an asynchronous Client in a synchronous context", dask/dask-ml#1016.)

Needs the ``[dask]`` extra: ``pip install "nnkern[dask]"``.
"""

from __future__ import annotations

import argparse

import numpy as np

CLASSES = np.arange(10)


def digits(test_size=0.25, seed=0):
    """scikit-learn's digits as float32 in [0, 1]: (x_train, x_test, y_train, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split((x / 16.0).astype(np.float32), y, test_size=test_size, random_state=seed)


def grid_search(data, param_grid=None, cv=3, max_iter=30):
    """GridSearchCV over MLPClassifier with its fits run on the current Dask client's
    workers; returns the fitted search."""
    import joblib
    from sklearn.model_selection import GridSearchCV

    from nnkern.sklearn import MLPClassifier

    x_train, _, y_train, _ = data
    param_grid = param_grid or {"hidden_layer_sizes": [(64,), (128,)], "alpha": [1e-4, 1e-2]}
    search = GridSearchCV(MLPClassifier(max_iter=max_iter, random_state=0), param_grid, cv=cv, n_jobs=-1)
    with joblib.parallel_config(backend="dask"):
        search.fit(x_train, y_train)
    return search


def incremental(data, epochs=5, block_rows=256):
    """dask-ml's Incremental: MLPClassifier.partial_fit over the blocks of a dask array,
    ``epochs`` passes; returns (the wrapper, test accuracy)."""
    import dask.array as da
    from dask_ml.wrappers import Incremental

    from nnkern.sklearn import MLPClassifier

    x_train, x_test, y_train, y_test = data
    x_blocks = da.from_array(x_train, chunks=(block_rows, x_train.shape[1]))
    y_blocks = da.from_array(y_train, chunks=block_rows)
    model = Incremental(MLPClassifier((64,), learning_rate_init=3e-3, random_state=0), scoring="accuracy",
                        shuffle_blocks=True, random_state=0)
    for _ in range(epochs):
        model.partial_fit(x_blocks, y_blocks, classes=CLASSES)
    return model, model.score(da.from_array(x_test, chunks=block_rows), da.from_array(y_test, chunks=block_rows))


def main(scheduler=None, workers=2, threads_per_worker=1):
    """Both ways on a LocalCluster of ``workers`` worker processes, or on the cluster whose
    scheduler is at ``scheduler``; returns the fitted search and Incremental's accuracy."""
    from dask.distributed import Client, LocalCluster

    cluster = None
    if scheduler is None:
        cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True)
    client = Client(scheduler or cluster)
    try:
        import nnkern

        budgets = client.run(nnkern.thread_budget)
        print("nnkern's thread budget per worker:", ", ".join(f"{n} (from {src})" for n, src in budgets.values()))
        data = digits()
        search = grid_search(data)
        test_accuracy = search.score(data[1], data[3])
        print(f"GridSearchCV: best {search.best_params_}, CV accuracy {search.best_score_:.3f}, "
              f"test accuracy {test_accuracy:.3f}")
        _, accuracy = incremental(data)
        print(f"Incremental (partial_fit over dask array blocks): test accuracy {accuracy:.3f}")
        return search, accuracy
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scheduler", help="address of a running Dask scheduler (default: a LocalCluster)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads-per-worker", type=int, default=1)
    args = parser.parse_args()
    main(args.scheduler, args.workers, args.threads_per_worker)
