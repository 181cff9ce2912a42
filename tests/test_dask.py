"""Searches over nnkern estimators on a real Dask cluster (two worker processes of one
thread each): joblib's "dask" backend under GridSearchCV, dask-ml's Incremental over
partial_fit, and examples/dask_search.py."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")
distributed = pytest.importorskip("dask.distributed")
pytest.importorskip("dask_ml")

import nnkern  # noqa: E402
from nnkern import _threads  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "dask_search.py"


def _example():
    spec = importlib.util.spec_from_file_location("example_dask_search", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cluster():
    # Dask sets OMP_NUM_THREADS=1 (and MKL's, OpenBLAS's) in the environment of the process
    # that starts the cluster, for good: nnkern's budget here would follow it after the module
    environ = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture
def client(cluster):
    with distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def example():
    return _example()


@pytest.fixture(scope="module")
def data(example):
    return example.digits()


def test_each_worker_gets_its_share_of_the_cores(client):
    """Dask's worker processes set OMP_NUM_THREADS=1; nnkern's budget follows it."""
    budgets = client.run(nnkern.thread_budget)
    assert len(budgets) == 2
    assert all(tuple(budget) == (1, "OMP_NUM_THREADS") for budget in budgets.values()), budgets


def test_grid_search_on_dask_equals_the_sequential_search(client, example, data):
    grid = {"hidden_layer_sizes": [(16,), (32,)], "alpha": [1e-4, 1e-1]}
    on_dask = example.grid_search(data, grid, cv=2, max_iter=5)
    assert client.run(lambda: True)  # the workers are still alive
    from sklearn.model_selection import GridSearchCV

    from nnkern.sklearn import MLPClassifier

    before = _threads._num_threads
    nnkern.set_num_threads(1)  # the workers' thread count: the same numbers, bit for bit
    try:
        here = GridSearchCV(MLPClassifier(max_iter=5, random_state=0), grid, cv=2, n_jobs=1)
        with pytest.warns(Warning):  # ConvergenceWarning: 5 epochs on purpose
            here.fit(data[0], data[2])
    finally:
        _threads._num_threads = before
    np.testing.assert_array_equal(on_dask.cv_results_["mean_test_score"], here.cv_results_["mean_test_score"])
    assert on_dask.best_params_ == here.best_params_


def test_incremental_trains_over_the_blocks_of_a_dask_array(client, example, data):
    model, accuracy = example.incremental(data, epochs=3)
    assert model.estimator_.n_features_in_ == 64
    assert accuracy > 0.8


@pytest.mark.slow
def test_the_example_runs_on_an_existing_cluster(cluster, example, capsys):
    search, accuracy = example.main(scheduler=cluster.scheduler_address)
    out = capsys.readouterr().out
    assert "1 (from OMP_NUM_THREADS)" in out and "GridSearchCV: best" in out
    assert search.best_score_ > 0.9 and accuracy > 0.85
