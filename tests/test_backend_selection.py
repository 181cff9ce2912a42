"""The backend registry and the one thread setting."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

import nnkern
from nnkern import ops


def test_numpy_is_always_available():
    assert "numpy" in nnkern.available_backends()


def test_set_and_use_backend():
    before = nnkern.get_backend()
    with nnkern.use_backend("numpy"):
        assert nnkern.get_backend() == "numpy"
    assert nnkern.get_backend() == before
    nnkern.set_backend("numpy")
    try:
        assert nnkern.get_backend() == "numpy"
    finally:
        nnkern.set_backend(before)


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="unknown backend 'tensorflow'.*numpy, cython, numba, cuda"):
        nnkern.set_backend("tensorflow")
    with pytest.raises(ValueError, match="unknown backend"):
        ops.softmax(np.zeros((2, 2)), backend="jax")


def test_unusable_backend_says_why_and_is_not_replaced():
    """Without a GPU (and without the simulator) "cuda" is refused with its reason."""
    if "cuda" in nnkern.available_backends():
        pytest.skip("a CUDA device or the simulator is present in this process")
    reason = nnkern.unavailable_reason("cuda")
    assert reason
    with pytest.raises(nnkern.BackendUnavailableError, match="backend 'cuda' is not usable here"):
        nnkern.set_backend("cuda")
    with pytest.raises(nnkern.BackendUnavailableError):
        ops.softmax(np.zeros((2, 2)), backend="cuda")
    assert nnkern.get_backend() != "cuda"


def test_default_backend_is_the_fastest_usable_cpu_backend():
    code = "import nnkern; print(nnkern.get_backend())"
    env_free = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                              env={"PATH": "", "NNKERN_BACKEND": ""})
    want = next(b for b in ("cython", "numba", "numpy") if b in nnkern.available_backends())
    assert env_free.stdout.strip() == want


def test_set_num_threads_validates_and_round_trips():
    n = nnkern.get_num_threads()
    assert n >= 1
    with pytest.raises(ValueError, match="positive integer"):
        nnkern.set_num_threads(0)
    with pytest.raises(ValueError, match="positive integer"):
        nnkern.set_num_threads(1.5)
    from threadpoolctl import threadpool_info

    blas_before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    nnkern.set_num_threads(1)
    try:
        assert nnkern.get_num_threads() == 1
        assert nnkern.thread_budget() == (1, "set_num_threads()")
        # the user's BLAS setting is theirs: nnkern limits it only while its own products run
        assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == blas_before
    finally:
        nnkern.set_num_threads(None)


def test_more_threads_than_cores_are_lowered_with_a_warning(monkeypatch):
    monkeypatch.delenv("NNKERN_ALLOW_OVERSUBSCRIPTION", raising=False)
    before, usable = nnkern.get_num_threads(), nnkern._threads.default_num_threads()
    try:
        with pytest.warns(nnkern.OversubscriptionWarning,
                          match=rf"{usable + 62} threads requested, but this process may use only {usable} core"):
            nnkern.set_num_threads(usable + 62)
        assert nnkern.get_num_threads() == usable
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            nnkern.set_num_threads(usable + 1, oversubscribe=True)
            assert nnkern.get_num_threads() == usable + 1
            with nnkern._threads.allow_oversubscription():
                nnkern.set_num_threads(usable + 2)
            assert nnkern.get_num_threads() == usable + 2
            monkeypatch.setenv("NNKERN_ALLOW_OVERSUBSCRIPTION", "1")
            nnkern.set_num_threads(usable + 3)
            assert nnkern.get_num_threads() == usable + 3
    finally:
        nnkern.set_num_threads(before, oversubscribe=True)


def test_import_does_not_import_numba_or_compile():
    code = "import sys, nnkern; print('numba' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def _openmp_env_after_import(**env_overrides):
    """GOMP_SPINCOUNT and OMP_WAIT_POLICY as a fresh process sees them after ``import
    nnkern``, while nnkern's OpenMP runtime loads, and after it has loaded (the backends
    load it)."""
    import os

    code = (
        "import os, nnkern\n"
        "from nnkern import _threads\n"
        "show = lambda: [os.environ.get(k) for k in ('GOMP_SPINCOUNT', 'OMP_WAIT_POLICY')]\n"
        "print(show())\n"
        "with _threads.openmp_runtime_loading():\n"
        "    print(show())\n"
        "nnkern.available_backends()\n"
        "print(show())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(env_overrides)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    return out.stdout.splitlines()


def test_the_openmp_spin_is_set_only_while_nnkerns_runtime_loads():
    """Other OpenMP runtimes loaded later, and child processes, get the user's environment."""
    after_import, loading, loaded = _openmp_env_after_import()
    assert after_import == loaded == "[None, None]"
    assert loading == "['4000', None]"


@pytest.mark.parametrize("override", [{"OMP_WAIT_POLICY": "PASSIVE"}, {"GOMP_SPINCOUNT": "123"}])
def test_a_users_openmp_wait_setting_wins(override):
    after, loading, loaded = _openmp_env_after_import(**override)
    expected = str([override.get("GOMP_SPINCOUNT"), override.get("OMP_WAIT_POLICY")])
    assert after == loading == loaded == expected
