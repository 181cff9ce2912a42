"""Shared test configuration.

tests/cuda runs in its own pytest process with NUMBA_ENABLE_CUDASIM=1 (see .ci/run): the
simulator replaces numba.cuda process-wide, so it must never leak into this run.
"""

from __future__ import annotations

import os

import pytest

# The suite runs more threads than this 2-core machine has on purpose (uneven work shares);
# the tests of the cap on thread counts unset this.
os.environ.setdefault("NNKERN_ALLOW_OVERSUBSCRIPTION", "1")

import nnkern

# The suite splits small test models over threads on purpose (the splits are what it tests);
# the small-work rule that keeps them on one thread has its own tests (test_threads_*.py).
nnkern._threads.SPLIT_MIN_MACS = 0

# The fused steps' thread plans time thread counts on a fit's first steps (NNKERN_PLAN=auto),
# so a step's thread count, and its round-off, would follow this machine's load: the suite
# runs the fixed rule above, deterministic, as the tests that compare results bit for bit
# need (test_determinism.py, test_dask.py) and the thread-count fixtures expect;
# tests/test_plan.py switches the plans on where it tests them.
os.environ.setdefault("NNKERN_PLAN", "off")

collect_ignore = ["cuda", "cuda_ptx"]

from _backends import FAST_CPU_BACKENDS


@pytest.fixture(autouse=True, scope="session")
def plan_cache_of_the_session(tmp_path_factory):
    """No test (nor a command it starts) reads or writes the user's plan cache."""
    before = os.environ.get("NNKERN_PLAN_CACHE")
    os.environ["NNKERN_PLAN_CACHE"] = str(tmp_path_factory.mktemp("plans") / "plans.json")
    yield
    if before is None:
        os.environ.pop("NNKERN_PLAN_CACHE")
    else:
        os.environ["NNKERN_PLAN_CACHE"] = before


@pytest.fixture(params=FAST_CPU_BACKENDS)
def fast_backend(request):
    """Each fast CPU backend usable here (cuda is tested in tests/cuda)."""
    return request.param


@pytest.fixture(params=["numpy", *FAST_CPU_BACKENDS])
def any_backend(request):
    """The reference and each fast CPU backend."""
    return request.param


def pytest_report_header(config):
    expected = os.environ.get("NNKERN_EXPECT_BACKENDS", "")
    return [f"nnkern backends available: {nnkern.available_backends()} (expected: {expected or 'unset'})"]


@pytest.fixture(params=[1, 2, 3], ids=lambda n: f"{n}threads")
def threads(request):
    """Run with 1, 2 and 3 threads (3: more threads than this machine's cores, uneven
    shares), then restore the count. Modules that need other counts define their own."""
    before = nnkern.get_num_threads()
    nnkern.set_num_threads(request.param)
    yield request.param
    nnkern.set_num_threads(before)
