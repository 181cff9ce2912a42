"""The thread budget: where the count comes from, in order, and what it leaves alone."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import nnkern
from nnkern import _threads, ops

HOST_ENVS = ("NNKERN_NUM_THREADS", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")


@pytest.fixture
def clean_budget(monkeypatch):
    """No explicit count and none of the host's variables: the budget as the machine gives it."""
    for name in HOST_ENVS:
        monkeypatch.delenv(name, raising=False)
    before = _threads._num_threads
    _threads.set_num_threads(None)
    yield
    _threads._num_threads = before


def _blas_threads():
    return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]


def test_the_budget_comes_from_the_first_source_that_sets_it(clean_budget, monkeypatch):
    cpus = os.cpu_count()
    count, source = nnkern.thread_budget()
    if source == "CPUs":
        assert count == cpus
    monkeypatch.setenv("NUMBA_NUM_THREADS", "1")
    assert nnkern.thread_budget() == (1, "NUMBA_NUM_THREADS")
    monkeypatch.setenv("OMP_NUM_THREADS", "1,1")  # nested form: its first level
    assert nnkern.thread_budget() == (1, "OMP_NUM_THREADS")
    monkeypatch.setenv("NNKERN_NUM_THREADS", "1")
    assert nnkern.thread_budget() == (1, "NNKERN_NUM_THREADS")
    nnkern.set_num_threads(1)
    assert nnkern.thread_budget() == (1, "set_num_threads()")
    nnkern.set_num_threads(None)
    assert nnkern.thread_budget() == (1, "NNKERN_NUM_THREADS")


def test_explicit_counts_win_over_the_hosts_limits(clean_budget, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("NNKERN_NUM_THREADS", "2")
    assert nnkern.thread_budget() == (2, "NNKERN_NUM_THREADS")
    nnkern.set_num_threads(3, oversubscribe=True)
    assert nnkern.get_num_threads() == 3


def test_host_limits_above_the_cpus_and_malformed_values_are_ignored(clean_budget, monkeypatch):
    baseline = nnkern.thread_budget()
    for value in ("", "zero", "0", "-2", str(os.cpu_count() + 4)):
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert nnkern.thread_budget() == baseline, value


def test_a_malformed_nnkern_num_threads_is_a_value_error(clean_budget, monkeypatch):
    monkeypatch.setenv("NNKERN_NUM_THREADS", "two")
    with pytest.raises(ValueError, match="NNKERN_NUM_THREADS must be a positive integer, got 'two'"):
        nnkern.get_num_threads()


def test_nnkern_num_threads_above_the_cores_is_lowered_with_a_warning(clean_budget, monkeypatch):
    monkeypatch.delenv("NNKERN_ALLOW_OVERSUBSCRIPTION", raising=False)
    usable = _threads.default_num_threads()
    monkeypatch.setenv("NNKERN_NUM_THREADS", str(usable + 5))
    with pytest.warns(nnkern.OversubscriptionWarning, match=f"{usable + 5} threads requested"):
        assert nnkern.thread_budget() == (usable, "NNKERN_NUM_THREADS")


@pytest.mark.skipif(os.cpu_count() < 2, reason="needs 2 CPUs to limit below them")
def test_a_threadpoolctl_limit_in_force_bounds_the_budget_while_it_holds(clean_budget):
    nnkern.ops.matmul(np.ones((2, 2)), np.ones((2, 2)), backend="numpy")  # NumPy's BLAS is loaded
    with threadpool_limits(1):
        count, source = nnkern.thread_budget()
        assert count == 1 and source.startswith("threadpoolctl ("), source
    assert not nnkern.thread_budget()[1].startswith("threadpoolctl")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or os.cpu_count() < 2, reason="needs Linux and 2 CPUs")
def test_the_cpu_affinity_mask_bounds_the_budget():
    code = ("import os, nnkern; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))});"
            "print(nnkern.thread_budget())")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}  # BLAS limits too
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "(1, 'CPU affinity')"


def _cgroup_tree(tmp_path, listing, files):
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "cgroup"
    proc.write_text(listing)
    root = tmp_path / "sys"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(proc), str(root)


def test_cgroup_v2_quota(tmp_path):
    proc, root = _cgroup_tree(tmp_path, "0::/user.slice/job\n", {
        "cpu.max": "max 100000\n",
        "user.slice/cpu.max": "300000 100000\n",
        "user.slice/job/cpu.max": "150000 100000\n",  # 1.5 CPUs: rounded up
    })
    assert _threads.cgroup_cpu_limit(proc, root) == 2
    proc, root = _cgroup_tree(tmp_path / "none", "0::/\n", {"cpu.max": "max 100000\n"})
    assert _threads.cgroup_cpu_limit(proc, root) is None


def test_cgroup_v1_quota(tmp_path):
    proc, root = _cgroup_tree(tmp_path, "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n", {
        "cpu,cpuacct/docker/abc/cpu.cfs_quota_us": "100000\n",
        "cpu,cpuacct/docker/abc/cpu.cfs_period_us": "100000\n",
        "cpu,cpuacct/cpu.cfs_quota_us": "-1\n",
        "cpu,cpuacct/cpu.cfs_period_us": "100000\n",
    })
    assert _threads.cgroup_cpu_limit(proc, root) == 1


def test_no_cgroup_file_means_no_quota(tmp_path):
    assert _threads.cgroup_cpu_limit(str(tmp_path / "absent"), str(tmp_path)) is None


def test_joblibs_loky_workers_get_their_share():
    """loky sets OMP_NUM_THREADS to the cores divided among its workers in each of them."""
    joblib = pytest.importorskip("joblib")
    budgets = joblib.Parallel(n_jobs=2)(joblib.delayed(nnkern.thread_budget)() for _ in range(2))
    share = max(1, os.cpu_count() // 2)
    assert all(budget == (share, "OMP_NUM_THREADS") for budget in budgets) or share == os.cpu_count(), budgets


def test_set_num_threads_leaves_the_blas_alone(clean_budget):
    before = _blas_threads()
    nnkern.set_num_threads(1)
    assert _blas_threads() == before


def test_the_numpy_reference_runs_on_the_blas_as_the_user_set_it(clean_budget, monkeypatch):
    """nnkern's budget does not touch the BLAS: changing OpenBLAS's count around a product
    is not safe while another thread is inside OpenBLAS."""
    seen = []
    real_matmul = np.matmul

    def spying_matmul(*args, **kwargs):
        seen.append(_blas_threads())
        return real_matmul(*args, **kwargs)

    before = _blas_threads()
    nnkern.set_num_threads(1)
    monkeypatch.setattr(np, "matmul", spying_matmul)
    a = np.ones((8, 8))
    ops.matmul(a, a, backend="numpy")
    ops.linear(a, a, np.zeros(8), backend="numpy")
    monkeypatch.undo()
    assert seen and all(threads == before for threads in seen), seen
    assert _blas_threads() == before


def test_concurrent_claims_share_the_budget(clean_budget):
    nnkern.set_num_threads(4, oversubscribe=True)
    inside = threading.Barrier(2)
    shares = []

    def caller():
        with _threads.claim():
            inside.wait(timeout=10)
            with _threads.claim() as threads:  # nested: counted once
                shares.append(threads)
            inside.wait(timeout=10)

    workers = [threading.Thread(target=caller) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert shares == [2, 2]
    with _threads.claim() as alone:
        assert alone == 4
    with _threads.claim(work=_threads.SPLIT_MIN_MACS - 1) as small:
        assert small == 1
    assert _threads._active == 0


def test_a_nested_claim_takes_no_more_threads_than_the_enclosing_one(clean_budget, monkeypatch):
    monkeypatch.setattr(_threads, "SPLIT_MIN_MACS", 1 << 22)  # the suite's conftest sets 0
    nnkern.set_num_threads(4, oversubscribe=True)
    with _threads.claim(work=_threads.SPLIT_MIN_MACS - 1) as small:
        with _threads.claim() as kernel:
            assert (small, kernel) == (1, 1)
        with _threads.claim(work=_threads.SPLIT_MIN_MACS) as large_kernel:
            assert large_kernel == 1
    with _threads.claim() as step:
        with _threads.claim(work=_threads.SPLIT_MIN_MACS - 1) as small_kernel:
            assert (step, small_kernel) == (4, 1)
        with _threads.claim() as kernel:  # the cap is the enclosing claim's, not a sibling's
            assert kernel == 4
    with _threads.claim() as alone:  # nothing left over once the claims end
        assert alone == 4


@pytest.mark.parametrize("hidden, threads", [(8, 1), (4096, 4)])
def test_a_layer_by_layer_steps_kernels_take_the_steps_threads(clean_budget, monkeypatch, hidden, threads):
    """A small network's step runs every kernel on one thread; a large one's on the budget."""
    from nnkern import nn, optim
    from nnkern.backends import cython_backend
    from nnkern.training import LayerStep

    monkeypatch.setattr(_threads, "SPLIT_MIN_MACS", 1 << 22)  # the suite's conftest sets 0
    nnkern.set_num_threads(4, oversubscribe=True)
    seen = []
    run = cython_backend._run

    def recording_run(kernel, *args):
        with _threads.claim() as share:
            seen.append(share)
        return run(kernel, *args)

    monkeypatch.setattr(cython_backend, "_run", recording_run)
    rows = _threads.SPLIT_MIN_MACS // (16 * 4096) + 1  # 16 x 4096 x rows: above the threshold
    model = nn.Sequential(nn.Linear(16, hidden, seed=0), nn.ReLU(), nn.Linear(hidden, 3, seed=1), backend="cython")
    step = LayerStep(model, optim.SGD(model, lr=0.1), model._objective("cross_entropy"))
    x = np.random.default_rng(0).standard_normal((rows, 16)).astype(np.float32)
    step.step(x, np.arange(rows) % 3)
    assert seen and set(seen) == {threads}


def test_info_prints_the_budget_and_its_source():
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    env["OMP_NUM_THREADS"] = "1"
    out = subprocess.run([sys.executable, "-m", "nnkern", "info"], capture_output=True, text=True, check=True,
                         env=env, timeout=120).stdout
    assert "nnkern.get_num_threads() = 1 (from OMP_NUM_THREADS)" in out
