"""nnkern called from several Python threads at once: every CPU backend gives the numbers of
sequential calls, nothing aborts or deadlocks; the backend setting is the process's; and
Numba's workqueue layer (which aborts on overlapping parallel regions) is serialised."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

import nnkern
from nnkern import _threads, nn, ops, optim

from _backends import FAST_CPU_BACKENDS

CALLERS = 4


@pytest.fixture
def split_everything(monkeypatch):
    """Two threads per call and no small-work rule: every parallel region opens, from every
    caller at once."""
    monkeypatch.setattr(_threads, "SPLIT_MIN_MACS", 0)
    before = _threads._num_threads
    nnkern.set_num_threads(2, oversubscribe=True)
    yield
    _threads._num_threads = before


def _data(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((160, 96)).astype(np.float32)
    return x, rng.integers(0, 10, len(x))


def _fit(backend, seed, loss="cross_entropy"):
    """Weights and losses of a small fit (96-128-64-10, batch 64: its products split), on
    the class labels, or with "mse" on their one-hot rows (the fused step's float head)."""
    x, y = _data(seed)
    if loss == "mse":
        y = np.eye(10, dtype=np.float32)[y]
    model = nn.Sequential(nn.Linear(96, 128, seed=seed), nn.ReLU(), nn.Linear(128, 64, seed=seed + 1), nn.Tanh(),
                          nn.Linear(64, 10, seed=seed + 2), backend=backend)
    history = model.fit(x, y, epochs=2, batch_size=64, optimizer=optim.Adam(lr=1e-3), loss=loss, seed=seed,
                        verbose=False)
    predictions = model.predict(x)
    weights = [np.asarray(p).copy() for p in model.parameters()]
    return weights, history, np.asarray(predictions)


def _ops(backend, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((200, 150)).astype(np.float32)
    b = rng.standard_normal((150, 130)).astype(np.float32)
    out = ops.linear(a, b, rng.standard_normal(130).astype(np.float32), activation="relu", backend=backend)
    return [out, ops.matmul(a, b, trans_a=False, backend=backend), ops.softmax(out, backend=backend)]


def _concurrently(fn, args_list):
    start = threading.Barrier(len(args_list))

    def call(args):
        start.wait(timeout=60)
        return fn(*args)

    with ThreadPoolExecutor(len(args_list)) as pool:
        return list(pool.map(call, args_list))


def _assert_close(got, want, rtol):
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g, dtype=np.float64), np.asarray(w, dtype=np.float64),
                                   rtol=rtol, atol=rtol)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
@pytest.mark.parametrize("backend", ["numpy", *FAST_CPU_BACKENDS])
def test_concurrent_fits_equal_sequential_ones(backend, loss, split_everything):
    from threadpoolctl import threadpool_info

    def blas_threads():
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    seeds = list(range(CALLERS))
    sequential = [_fit(backend, s, loss) for s in seeds]
    blas_before = blas_threads()
    concurrent = _concurrently(lambda s: _fit(backend, s, loss), [(s,) for s in seeds])
    assert blas_threads() == blas_before  # nnkern leaves the BLAS's count alone
    for (w_seq, h_seq, p_seq), (w_con, h_con, p_con) in zip(sequential, concurrent):
        # a call's share of the budget may differ from the sequential run's: a product's
        # summation order then changes with the split (round-off, README "Determinism")
        _assert_close(w_con, w_seq, 1e-4)
        _assert_close([p_con], [p_seq], 1e-4)
    assert _threads._active == 0


@pytest.mark.parametrize("backend", ["numpy", *FAST_CPU_BACKENDS])
def test_concurrent_ops_equal_sequential_ones(backend, split_everything):
    seeds = list(range(CALLERS)) * 2
    sequential = [_ops(backend, s) for s in seeds]
    concurrent = _concurrently(lambda s: _ops(backend, s), [(s,) for s in seeds])
    for got, want in zip(concurrent, sequential):
        _assert_close(got, want, 1e-5)


def test_set_backend_is_the_default_of_every_thread():
    before = nnkern._backend._default
    try:
        nnkern.set_backend("numpy")
        seen = _concurrently(nnkern.get_backend, [()] * CALLERS)
        assert seen == ["numpy"] * CALLERS
        models = _concurrently(lambda: nn.Sequential(nn.Linear(4, 3, seed=0)), [()] * CALLERS)
        assert [model.backend for model in models] == ["numpy"] * CALLERS
    finally:
        nnkern._backend._default = before


def test_use_backend_holds_in_its_own_context_only():
    other = next(b for b in ("cython", "numba", "numpy") if b in nnkern.available_backends())
    default = nnkern.get_backend()
    inside, outside = threading.Event(), threading.Event()
    seen = {}

    def overriding():
        with nnkern.use_backend("numpy"):
            seen["inside"] = nnkern.get_backend()
            inside.set()
            outside.wait(timeout=10)
        seen["after"] = nnkern.get_backend()

    thread = threading.Thread(target=overriding)
    thread.start()
    inside.wait(timeout=10)
    seen["other thread"] = nnkern.get_backend()  # the override is not this thread's
    outside.set()
    thread.join()
    assert seen == {"inside": "numpy", "other thread": default, "after": default}
    with nnkern.use_backend(other):
        copied = contextvars.copy_context()
        assert _concurrently(lambda: copied.copy().run(nnkern.get_backend), [()]) == [other]


def test_joblib_threads_train_on_the_backend_set_for_the_process():
    """The issue's case: after set_backend, every fit under joblib's threading backend."""
    sklearn = pytest.importorskip("sklearn")  # noqa: F841
    from joblib import Parallel, delayed

    from nnkern.sklearn import MLPClassifier

    backend = FAST_CPU_BACKENDS[-1] if FAST_CPU_BACKENDS else "numpy"
    before = nnkern._backend._default
    x, y = _data(0)

    def fit(seed):  # in a worker thread: the backend it sees, and the one the fit trained on
        clf = MLPClassifier((16,), max_iter=2, random_state=seed).fit(x, y)
        return nnkern.get_backend(), clf.model_.backend

    try:
        nnkern.set_backend(backend)
        seen = Parallel(n_jobs=2, backend="threading")(delayed(fit)(seed) for seed in range(4))
    finally:
        nnkern._backend._default = before
    assert seen == [(backend, backend)] * 4


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_estimator_fits_from_joblib_threads_equal_sequential_ones(backend):
    """scikit-learn estimators fitted by joblib's threading backend (on "cython" each epoch
    one call of the engine with the GIL released, the L2 penalty summed there) reach the
    weights and loss curves of the same fits one after another."""
    pytest.importorskip("sklearn")
    from joblib import Parallel, delayed

    from nnkern.sklearn import MLPClassifier

    x, y = _data(1)

    def fit(seed):
        clf = MLPClassifier((24,), alpha=1e-3, max_iter=6, random_state=seed, backend=backend).fit(x, y)
        return clf.coefs_ + clf.intercepts_, clf.loss_curve_

    sequential = [fit(seed) for seed in range(4)]
    threaded = Parallel(n_jobs=2, backend="threading")(delayed(fit)(seed) for seed in range(4))
    for (params, losses), (want_params, want_losses) in zip(threaded, sequential):
        assert losses == want_losses
        for got, want in zip(params, want_params):
            np.testing.assert_array_equal(got, want)


WORKQUEUE_SCRIPT = textwrap.dedent("""
    import sys, threading
    import numpy as np
    import nnkern
    from nnkern import _threads, nn, optim, ops
    from nnkern.backends import numba_backend
    assert numba_backend.THREADING_LAYER == "workqueue", numba_backend.THREADING_LAYER
    _threads.SPLIT_MIN_MACS = 0
    nnkern.set_num_threads(2, oversubscribe=True)

    def fit(seed, sparse):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((160, 96)).astype(np.float32)
        if sparse:
            x[x < 0.8] = 0  # the fused step's sparse first layer: a prange without a given split
        y = rng.integers(0, 10, len(x))
        model = nn.Sequential(nn.Linear(96, 256, seed=seed), nn.ReLU(), nn.Linear(256, 10, seed=seed + 1),
                              backend="numba")
        model.fit(x, y, epochs=3, batch_size=64, optimizer=optim.SGD(lr=0.05), seed=seed, verbose=False)
        a = rng.standard_normal((256, 200)).astype(np.float32)
        return [np.asarray(p).copy() for p in model.parameters()] + [ops.matmul(a, a.T, backend="numba")]

    jobs = [(seed, seed % 2 == 1) for seed in range(4)]
    sequential = [fit(*job) for job in jobs]
    results = [None] * len(jobs)
    start = threading.Barrier(len(jobs))

    def run(i):
        start.wait()
        results[i] = fit(*jobs[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got, want in zip(results, sequential):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    print("ok")
""")


@pytest.mark.skipif("numba" not in nnkern.available_backends(), reason="needs the numba backend")
def test_concurrent_numba_fits_under_the_workqueue_layer():
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    done = subprocess.run([sys.executable, "-c", WORKQUEUE_SCRIPT], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("ok")


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
def test_the_fused_step_runs_small_work_on_one_thread(backend, monkeypatch):
    """The engine gives a step its share of the budget only when its largest product
    (batch rows x fan_in x fan_out) reaches SPLIT_MIN_MACS."""
    from nnkern import engine

    engine_module = engine.importlib.import_module(engine._ENGINES[backend], "nnkern")
    asked = []
    real_step = engine_module.FusedMLPStep.step

    class Spy(engine_module.FusedMLPStep):
        def step(self, *args):
            asked.append(args[8])  # step(x, labels, lr, a, b, eps, weight_decay, t, num_threads, ...)
            return real_step(self, *args)

    monkeypatch.setattr(engine_module, "FusedMLPStep", Spy)
    before = _threads._num_threads
    nnkern.set_num_threads(2, oversubscribe=True)
    x, y = _data(0)
    product = 64 * 96 * 128  # batch 64, the 96 x 128 layer
    try:
        for threshold, want in ((product + 1, 1), (product, 2)):
            monkeypatch.setattr(_threads, "SPLIT_MIN_MACS", threshold)
            asked.clear()
            model = nn.Sequential(nn.Linear(96, 128, seed=0), nn.ReLU(), nn.Linear(128, 10, seed=1), backend=backend)
            model.fit(x, y, epochs=1, batch_size=64, optimizer=optim.SGD(lr=0.1), seed=0, verbose=False)
            assert asked and set(asked) == {want}, (threshold, asked)
    finally:
        _threads._num_threads = before
