"""The fused step's thread plan (nnkern._plan): timing the candidates on real steps, the
plan cache on disk, NNKERN_PLAN, the budget share's cap, ``nnkern tune`` and ``nnkern info``,
and fits trained under a plan against the layer-by-layer path.

The timing tests run the planner with a fake clock and a fake step whose cost per thread
count they set, so what they assert does not depend on this machine's speed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest

import nnkern
from nnkern import _plan, _threads, cli, nn, optim
from nnkern.engine import build_fused_step
from nnkern.losses import CrossEntropyLoss

STEPS_PER_CANDIDATE = _plan.WARMUP_STEPS + _plan.TIMED_STEPS


@pytest.fixture
def plans(tmp_path, monkeypatch):
    """NNKERN_PLAN=auto with a cache file of this test's own; the process's plans are
    forgotten before and after. Yields the cache's path."""
    path = tmp_path / "cache" / "plans.json"
    monkeypatch.setenv(_plan.PLAN_ENV, "auto")
    monkeypatch.setenv(_plan.PLAN_CACHE_ENV, str(path))
    _plan.forget_plans()
    _plan._warned.clear()
    yield path
    _plan.forget_plans()


@pytest.fixture
def budget():
    """``budget(n)`` sets the thread budget to n (above the cores too); restored after."""
    before = _threads._num_threads

    def set_budget(n):
        nnkern.set_num_threads(n, oversubscribe=True)

    yield set_budget
    nnkern.set_num_threads(before, oversubscribe=True)


class FakeStep:
    """A step whose cost per thread count is set: each call advances the fake clock by it
    and records the thread count it was given."""

    def __init__(self, seconds_per_step: dict):
        self.seconds_per_step = seconds_per_step
        self.now = 0.0
        self.calls = []

    def clock(self) -> float:
        return self.now

    def __call__(self, threads: int) -> str:
        self.calls.append(threads)
        self.now += self.seconds_per_step[threads]
        return f"result of a step on {threads}"


def _planner(fake, network="64-128relu-10", rows=32, dtype="float32", sparse=False, backend="cython",
             work=1 << 30):
    return _plan.ThreadPlanner(backend, network, rows, dtype, sparse, work, clock=fake.clock)


def _run(planner, fake, steps):
    return [planner.run(fake) for _ in range(steps)]


def test_the_faster_candidate_is_planned_and_kept(plans, budget):
    budget(4)
    fake = FakeStep({1: 400e-6, 2: 250e-6, 4: 300e-6})
    planner = _planner(fake)
    results = _run(planner, fake, 40)
    assert results[-1] == "result of a step on 2"  # the step's own result comes back
    # the first call (untimed), then each candidate on consecutive steps, then the plan
    trial = 1 + 3 * STEPS_PER_CANDIDATE
    assert fake.calls[:trial] == [1] + [1] * STEPS_PER_CANDIDATE + [2] * STEPS_PER_CANDIDATE \
        + [4] * STEPS_PER_CANDIDATE
    assert fake.calls[trial:] == [2] * (40 - trial)
    plan = planner.current_plan()
    assert (plan.threads, plan.source, plan.saved) == (2, "timed", True)
    assert plan.timings == pytest.approx({1: 400e-6, 2: 250e-6, 4: 300e-6})
    assert planner.describe() == (f"plan: 2 threads (timed: 1 thread 400 us/step, 2 threads 250 us/step, "
                                  f"4 threads 300 us/step; cached in {plans})")
    # bounded: at most a few percent of a default `nnkern train` epoch (60000 / 64 steps)
    assert trial <= 0.02 * 60000 / cli.DEFAULT_BATCH_SIZE


def test_the_untimed_steps_do_not_count(plans, budget):
    """The first call (a compilation, new buffers) and each candidate's warm-up steps may be
    slow; only the timed steps decide."""
    budget(2)
    fake = FakeStep({1: 300e-6, 2: 200e-6})
    planner = _planner(fake)
    fake.seconds_per_step[1] = 10.0  # the first call and the warm-up of 1 thread: slow
    planner.run(fake)
    planner.run(fake)
    fake.seconds_per_step[1] = 100e-6
    _run(planner, fake, 20)
    assert planner.current_plan().threads == 1


@pytest.mark.parametrize("seconds_on_2, planned", [(97e-6, 1), (100e-6, 1), (120e-6, 1), (90e-6, 2)])
def test_fewer_threads_win_a_tie(plans, budget, seconds_on_2, planned):
    """2 threads are planned only when more than TIE_MARGIN (5%) faster than 1."""
    budget(2)
    fake = FakeStep({1: 100e-6, 2: seconds_on_2})
    planner = _planner(fake)
    _run(planner, fake, 1 + 2 * STEPS_PER_CANDIDATE)
    assert planner.current_plan().threads == planned


@pytest.mark.parametrize("share, candidates", [(1, [1]), (2, [1, 2]), (3, [1, 3]), (4, [1, 2, 4]), (16, [1, 8, 16])])
def test_candidates(share, candidates):
    assert _plan.candidate_threads(share) == candidates


def test_a_share_of_one_needs_no_timing(plans, budget):
    budget(1)
    fake = FakeStep({1: 1e-4})
    planner = _planner(fake)
    _run(planner, fake, 3)
    assert fake.calls == [1, 1, 1]
    assert planner.current_plan().source == "share"
    assert not plans.exists()


def test_the_cache_round_trips(plans, budget):
    budget(2)
    fake = FakeStep({1: 300e-6, 2: 200e-6})
    _run(_planner(fake), fake, 1 + 2 * STEPS_PER_CANDIDATE)
    entries = json.loads(plans.read_text())["plans"]
    key = _plan.PlanKey(_plan.cpu_model(), "cython", "64-128relu-10", 32, "float32", False, 2)
    assert list(entries) == [key.text()]
    assert entries[key.text()]["threads"] == 2
    assert entries[key.text()]["us_per_step"] == {"1": 300.0, "2": 200.0}

    _plan.forget_plans()  # a new process: the plan comes from the file, from the first step on
    again = FakeStep({1: 300e-6, 2: 200e-6})
    planner = _planner(again)
    _run(planner, again, 3)
    assert again.calls == [2, 2, 2]
    plan = planner.current_plan()
    assert (plan.threads, plan.source) == (2, "cache")
    assert plan.timings == pytest.approx({1: 300e-6, 2: 200e-6})
    assert planner.describe() == (f"plan: 2 threads, from the cache {plans} "
                                  f"(timed: 1 thread 300 us/step, 2 threads 200 us/step)")


@pytest.mark.parametrize("other", [{"rows": 64}, {"dtype": "float64"}, {"network": "64-128tanh-10"},
                                   {"network": "64-256relu-10"}, {"sparse": True}, {"backend": "numba"}],
                         ids=["batch", "dtype", "activation", "width", "sparse", "backend"])
def test_another_step_misses_the_cache(plans, budget, other):
    budget(2)
    fake = FakeStep({1: 300e-6, 2: 200e-6})
    _run(_planner(fake), fake, 1 + 2 * STEPS_PER_CANDIDATE)
    _plan.forget_plans()
    fake = FakeStep({1: 100e-6, 2: 200e-6})
    planner = _planner(fake, **other)
    _run(planner, fake, 1 + 2 * STEPS_PER_CANDIDATE)
    assert fake.calls[:3] == [1, 1, 1]  # timed again, not taken from the cache
    assert planner.current_plan().threads == 1
    assert len(json.loads(plans.read_text())["plans"]) == 2  # both kept


def test_another_share_misses_the_cache(plans, budget):
    budget(2)
    fake = FakeStep({1: 300e-6, 2: 200e-6, 4: 100e-6})
    _run(_planner(fake), fake, 1 + 2 * STEPS_PER_CANDIDATE)
    _plan.forget_plans()
    budget(4)
    planner = _planner(fake)
    assert planner.known_plan(4) is None
    assert planner.known_plan(2).threads == 2


@pytest.mark.parametrize("content", ["{not json", "", "[1, 2]", '{"format": 99, "plans": {}}', "\xff\xfe"],
                         ids=["broken", "empty", "list", "format", "bytes"])
def test_a_corrupt_cache_warns_once_and_is_replaced(plans, budget, content):
    budget(2)
    plans.parent.mkdir()
    plans.write_bytes(content.encode("latin-1"))
    fake = FakeStep({1: 300e-6, 2: 200e-6})
    planner = _planner(fake)
    with pytest.warns(_plan.PlanCacheWarning, match="ignoring the plan cache") as caught:
        assert planner.known_plan(2) is None
        assert _planner(fake, rows=8).known_plan(2) is None  # read again: no second warning
    assert len([w for w in caught if issubclass(w.category, _plan.PlanCacheWarning)]) == 1
    _run(planner, fake, 1 + 2 * STEPS_PER_CANDIDATE)
    assert planner.current_plan().threads == 2  # planned all the same
    assert len(json.loads(plans.read_text())["plans"]) == 1  # and the file rewritten as a valid one


@pytest.mark.parametrize("entry", [{"threads": "2"}, {"threads": 0}, {"threads": 3}, {"threads": 2, "us_per_step": 5},
                                   "2"], ids=["text", "zero", "above-share", "timings", "not-a-record"])
def test_an_invalid_entry_is_a_miss(plans, budget, entry):
    budget(2)
    key = _plan.PlanKey(_plan.cpu_model(), "cython", "64-128relu-10", 32, "float32", False, 2)
    plans.parent.mkdir()
    plans.write_text(json.dumps({"format": _plan.CACHE_FORMAT, "plans": {key.text(): entry}}))
    fake = FakeStep({1: 300e-6, 2: 200e-6})
    planner = _planner(fake)
    _run(planner, fake, 1 + 2 * STEPS_PER_CANDIDATE)
    assert planner.current_plan().source == "timed"
    assert json.loads(plans.read_text())["plans"][key.text()]["threads"] == 2


def test_an_unwritable_cache_warns_and_keeps_the_plan(plans, budget, tmp_path, monkeypatch):
    budget(2)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(_plan.PLAN_CACHE_ENV, str(blocker / "plans.json"))  # its folder is a file
    fake = FakeStep({1: 300e-6, 2: 200e-6})
    planner = _planner(fake)
    with pytest.warns(_plan.PlanCacheWarning) as caught:
        _run(planner, fake, 1 + 2 * STEPS_PER_CANDIDATE + 2)
    assert ["cannot be read (NotADirectoryError" in str(w.message) for w in caught] == [True, False]
    assert "cannot save the step's plan" in str(caught[1].message)
    assert fake.calls[-2:] == [2, 2]
    plan = planner.current_plan()
    assert not plan.saved
    assert "; not cached: FileExistsError: " in planner.describe()


WRITER = """
import sys
from nnkern import _plan
for n in range(8):
    key = _plan.PlanKey("cpu", "cython", f"{sys.argv[1]}-{n}-10", 8, "float32", False, 2)
    assert _plan.write_plan(key, _plan.Plan(1, {1: 1e-4, 2: 2e-4}), sys.argv[2]) == ""
"""


def test_concurrent_processes_keep_each_others_plans(plans):
    """Each write re-reads the file under its lock: the plans other processes wrote
    between this one's read and its write survive, and the file is never half written."""
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(n), str(plans)]) for n in range(4)]
    assert [writer.wait(120) for writer in writers] == [0] * 4
    entries = json.loads(plans.read_text())["plans"]
    assert len(entries) == 32
    assert all(entry["threads"] == 1 for entry in entries.values())
    assert sorted(p.name for p in plans.parent.iterdir()) == ["plans.json", "plans.json.lock"]  # no temporary left


def test_the_default_cache_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.delenv(_plan.PLAN_CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert _plan.cache_path() == str(tmp_path / "nnkern" / "plans.json")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _plan.cache_path() == str(tmp_path / "home" / ".cache" / "nnkern" / "plans.json")
    monkeypatch.setenv(_plan.PLAN_CACHE_ENV, str(tmp_path / "mine.json"))
    assert _plan.cache_path() == str(tmp_path / "mine.json")


# ---------------------------------------------------------------------------------------
# NNKERN_PLAN and the share of the budget
# ---------------------------------------------------------------------------------------


def test_off_is_the_work_rule_without_timing(plans, budget, monkeypatch):
    budget(2)
    monkeypatch.setenv(_plan.PLAN_ENV, "off")
    monkeypatch.setattr(_threads, "SPLIT_MIN_MACS", 1000)
    small, large = FakeStep({1: 1e-4, 2: 1e-4}), FakeStep({1: 1e-4, 2: 1e-4})
    small.clock = large.clock = None  # never read
    _run(_planner(small, work=999), small, 5)
    _run(_planner(large, work=1000), large, 5)
    assert small.calls == [1] * 5
    assert large.calls == [2] * 5
    assert not plans.exists()
    assert "NNKERN_PLAN=off" in _planner(small, work=999).describe()


@pytest.mark.parametrize("setting, budget_threads, used", [("1", 2, 1), ("2", 2, 2), ("3", 2, 2), (" 2 ", 4, 2)])
def test_a_number_is_that_many_threads_within_the_share(plans, budget, monkeypatch, setting, budget_threads, used):
    budget(budget_threads)
    monkeypatch.setenv(_plan.PLAN_ENV, setting)
    fake = FakeStep({n: 1e-4 for n in range(1, 5)})
    fake.clock = None
    planner = _planner(fake, work=1)  # below any SPLIT_MIN_MACS: the number wins over the work rule
    _run(planner, fake, 4)
    assert fake.calls == [used] * 4
    assert planner.describe() == f"plan: {used} thread{'s' * (used > 1)} (NNKERN_PLAN={setting.strip()}, " \
                                 f"at most the budget share {budget_threads})"


@pytest.mark.parametrize("setting", ["fast", "0", "-2", "1.5"])
def test_a_bad_setting_is_refused(monkeypatch, setting):
    monkeypatch.setenv(_plan.PLAN_ENV, setting)
    with pytest.raises(ValueError, match=f"NNKERN_PLAN must be 'cached', 'auto', 'off' or a positive number of threads, "
                                         f"got '{setting}'"):
        _plan.plan_setting()


def test_cached_is_the_default(monkeypatch):
    monkeypatch.delenv(_plan.PLAN_ENV, raising=False)
    assert _plan.plan_setting() == "cached"


def test_cached_uses_a_stored_plan_else_the_rule_and_never_times(plans, budget, monkeypatch):
    budget(2)
    monkeypatch.setattr(_threads, "SPLIT_MIN_MACS", 1000)
    timed = FakeStep({1: 400e-6, 2: 250e-6})
    _run(_planner(timed), timed, 1 + 2 * STEPS_PER_CANDIDATE)  # NNKERN_PLAN=auto: plans 2 threads
    _plan.forget_plans()  # a new process: the plan is on disk only
    monkeypatch.setenv(_plan.PLAN_ENV, "cached")
    before = plans.read_text()
    stored, small, large = (FakeStep({1: 1e-4, 2: 1e-4}) for _ in range(3))
    stored.clock = small.clock = large.clock = None  # never read: nothing is timed
    planner = _planner(stored, work=1)  # the planned step: its plan wins over the work rule
    _run(planner, stored, 5)
    assert stored.calls == [2] * 5
    assert planner.describe().startswith("plan: 2 threads, from the cache")
    # steps without a stored plan follow the rule: one thread below SPLIT_MIN_MACS, else the share
    _run(_planner(small, rows=64, work=999), small, 5)
    rule = _planner(large, rows=128, work=1000)
    _run(rule, large, 5)
    assert (small.calls, large.calls) == ([1] * 5, [2] * 5)
    assert rule.describe().startswith("plan: 2 threads (none cached for this step")
    assert plans.read_text() == before  # and the cache is left as it was


@pytest.mark.parametrize("setting", ["auto", "4"])
def test_the_share_caps_every_plan_under_concurrency(plans, budget, monkeypatch, setting):
    """With another nnkern call running, a step's share is half the budget: neither a
    number nor a plan made for the whole budget gives it more."""
    budget(4)
    monkeypatch.setenv(_plan.PLAN_ENV, setting)
    fake = FakeStep({1: 400e-6, 2: 300e-6, 4: 100e-6})
    if setting == "auto":  # a plan of 4 threads for the whole budget
        _run(_planner(fake), fake, 1 + 3 * STEPS_PER_CANDIDATE)
        assert fake.calls[-1] == 4
    fake.calls.clear()
    entered, leave = threading.Event(), threading.Event()

    def other_caller():
        with _threads.claim():
            entered.set()
            leave.wait(30)

    other = threading.Thread(target=other_caller)
    other.start()
    try:
        assert entered.wait(30)
        planner = _planner(fake)
        _run(planner, fake, 1 + 2 * STEPS_PER_CANDIDATE + 3)
    finally:
        leave.set()
        other.join()
    assert max(fake.calls) == 2
    assert planner.last_share == 2
    _run(planner, fake, 2)  # alone again: the whole budget's plan (auto) or the number
    assert fake.calls[-2:] == [4, 4]


# ---------------------------------------------------------------------------------------
# Real steps: fits under a plan, fit(verbose=True), nnkern tune and nnkern info
# ---------------------------------------------------------------------------------------


def _model(backend, dtype):
    return nn.Sequential(nn.Linear(64, 160, seed=0), nn.ReLU(), nn.Linear(160, 10, seed=1),
                         backend=backend, dtype=dtype)


def _data(dtype):
    rng = np.random.default_rng(0)
    return rng.standard_normal((32 * 24, 64)).astype(dtype), rng.integers(0, 10, 32 * 24)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_planned_fit_equals_the_layer_path(plans, budget, fast_backend, dtype):
    """The steps that time 1 and 2 threads train the model as every other step: the fit
    equals the layer-by-layer one to round-off (the products are large enough to split)."""
    budget(2)
    x, y = _data(dtype)
    tol = 2e-4 if dtype == np.float32 else 1e-10
    results = []
    for fused in (False, True):
        model = _model(fast_backend, dtype)
        history = model.fit(x, y, epochs=2, batch_size=32, optimizer=optim.SGD(lr=0.05, momentum=0.9), seed=1,
                            verbose=False, fused=fused)
        results.append((history.history["loss"], [p.copy() for p in model.parameters()]))
    (want_loss, want_params), (got_loss, got_params) = results
    np.testing.assert_allclose(got_loss, want_loss, rtol=tol)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
    entries = json.loads(plans.read_text())["plans"]
    assert list(entries) == [_plan.PlanKey(_plan.cpu_model(), fast_backend, "64-160relu-10", 32,
                                           np.dtype(dtype).name, False, 2).text()]
    assert set(entries[next(iter(entries))]["us_per_step"]) == {"1", "2"}


def test_fit_verbose_prints_the_plan(plans, budget, fast_backend, capsys):
    budget(2)
    x, y = _data(np.float32)
    _model(fast_backend, np.float32).fit(x, y, epochs=1, batch_size=32, optimizer=optim.SGD(lr=0.05), verbose=True)
    out = capsys.readouterr().out
    assert f"cached in {plans})" in out
    assert "plan: " in out and " us/step, 2 threads " in out
    _plan.forget_plans()
    _model(fast_backend, np.float32).fit(x, y, epochs=1, batch_size=32, optimizer=optim.SGD(lr=0.05), verbose=True)
    out = capsys.readouterr().out
    assert f", from the cache {plans} (timed: 1 thread " in out
    assert out.index("plan: ") < out.index("epoch 1/1")  # known before the first step


def test_a_short_fit_says_the_plan_is_not_made_yet(plans, budget, fast_backend, capsys):
    budget(2)
    x, y = _data(np.float32)
    _model(fast_backend, np.float32).fit(x[:96], y[:96], epochs=1, batch_size=32, optimizer=optim.SGD(lr=0.05))
    assert "plan: the fit ended while the thread counts were being timed" in capsys.readouterr().out


def test_the_step_exposes_its_planner(plans, budget, fast_backend):
    budget(2)
    x, y = _data(np.float32)
    model = _model(fast_backend, np.float32)
    optimizer = optim.SGD(model, lr=0.05)
    step = build_fused_step(model, optimizer, CrossEntropyLoss(), x, y, 32)
    assert (step.plan.backend, step.plan.network, step.plan.rows, step.plan.dtype, step.plan.sparse_input) == \
        (fast_backend, "64-160relu-10", 32, "float32", False)
    assert step.plan.work == 32 * 64 * 160


def test_a_bad_setting_stops_fit(monkeypatch, fast_backend):
    monkeypatch.setenv(_plan.PLAN_ENV, "many")
    x, y = _data(np.float32)
    with pytest.raises(ValueError, match="NNKERN_PLAN must be"):
        _model(fast_backend, np.float32).fit(x, y, batch_size=32, optimizer=optim.SGD(lr=0.05), verbose=False)


def test_tune_writes_plans_and_info_shows_them(plans, budget, fast_backend, capsys):
    status = cli.main(["tune", "--hidden", "12", "--hidden", "8,8", "--batch-size", "4", "--inputs", "dense,sparse",
                       "--backend", fast_backend, "--threads", "2"])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.count("plan: ") == 4
    assert "784-12relu-10, batch 4, float32, dense input: plan: " in out
    assert "784-8relu-8relu-10, batch 4, float32, sparse input: plan: " in out
    entries = json.loads(plans.read_text())["plans"]
    assert len(entries) == 4
    assert all(f"| {fast_backend} | " in key and "| batch 4 | float32 |" in key and key.endswith("| share 2")
               for key in entries)
    assert cli.main(["info"]) == 0
    assert f"cache {plans} (4 plan(s);" in capsys.readouterr().out
    # tune times again what is cached
    _plan.forget_plans()
    assert cli.main(["tune", "--hidden", "12", "--batch-size", "4", "--inputs", "dense", "--backend", fast_backend,
                     "--threads", "2"]) == 0
    assert "cached in" in capsys.readouterr().out


def test_tune_refuses_when_plans_are_off(plans, monkeypatch, capsys):
    monkeypatch.setenv(_plan.PLAN_ENV, "off")
    assert cli.main(["tune", "--hidden", "12", "--batch-size", "4"]) == 1
    assert "NNKERN_PLAN=off switches the plans off" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["sparse,thin", ""])
def test_tune_checks_its_inputs_option(bad, capsys):
    with pytest.raises(SystemExit):
        cli.main(["tune", "--inputs", bad])
    assert "expected sparse, dense or sparse,dense" in capsys.readouterr().err


def test_no_warning_without_a_cache_file(plans, budget):
    budget(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _plan.read_cache() == {}
        assert _planner(FakeStep({})).known_plan(2) is None
