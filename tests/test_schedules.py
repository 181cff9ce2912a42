"""Learning-rate schedules (nnkern.optim) against torch.optim.lr_scheduler's numbers, and
their stepping by fit, in the layer-by-layer path and in the fused training engine."""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnkern
from nnkern import nn, optim

torch = pytest.importorskip("torch")

BASE_LR = 0.1
STEPS = 30

# name: (our schedule, torch's scheduler for a torch optimizer)
SCHEDULES = {
    "step": (lambda: optim.StepLR(3, gamma=0.5), lambda o: torch.optim.lr_scheduler.StepLR(o, 3, gamma=0.5)),
    "multistep": (lambda: optim.MultiStepLR([2, 5, 5, 11], gamma=0.3),
                  lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [2, 5, 5, 11], gamma=0.3)),
    "exponential": (lambda: optim.ExponentialLR(0.9), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9)),
    "cosine": (lambda: optim.CosineAnnealingLR(7, eta_min=0.001),
               lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 7, eta_min=0.001)),
    "linear_defaults": (lambda: optim.LinearLR(), lambda o: torch.optim.lr_scheduler.LinearLR(o)),
    "linear_decay": (lambda: optim.LinearLR(1.0, 0.0, total_iters=20),
                     lambda o: torch.optim.lr_scheduler.LinearLR(o, 1.0, 0.0, total_iters=20)),
    "lambda": (lambda: optim.LambdaLR(lambda e: 1 / (1 + e)),
               lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda e: 1 / (1 + e))),
    "warmup_cosine": (
        lambda: optim.SequentialLR([optim.LinearLR(0.1, total_iters=4), optim.CosineAnnealingLR(12)], [4]),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=4),
                torch.optim.lr_scheduler.CosineAnnealingLR(o, 12)], [4])),
    "three_parts": (
        lambda: optim.SequentialLR([optim.ExponentialLR(0.8), optim.StepLR(2), optim.LinearLR(0.5, 0.1, 6)],
                                   [3, 9]),
        lambda o: torch.optim.lr_scheduler.SequentialLR(
            o, [torch.optim.lr_scheduler.ExponentialLR(o, 0.8), torch.optim.lr_scheduler.StepLR(o, 2),
                torch.optim.lr_scheduler.LinearLR(o, 0.5, 0.1, 6)], [3, 9])),
}


def torch_rates(make_scheduler, steps=STEPS):
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    scheduler = make_scheduler(opt)
    rates = [opt.param_groups[0]["lr"]]
    for _ in range(steps):
        opt.step()
        scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return rates


def our_rates(schedule, steps=STEPS):
    opt = optim.SGD(BASE_LR, schedule=schedule)
    rates = [opt.lr]
    for _ in range(steps):
        schedule.step()
        assert schedule.get_last_lr() == [opt.lr]
        rates.append(opt.lr)
    return rates


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_rates_are_torchs(name):
    ours, theirs = SCHEDULES[name]
    np.testing.assert_allclose(our_rates(ours()), torch_rates(theirs), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("kwargs", [
    {},
    {"patience": 2, "factor": 0.5, "cooldown": 2},
    {"mode": "max", "patience": 1, "threshold": 0.05, "threshold_mode": "abs", "min_lr": 0.004},
    {"patience": 0, "threshold": 0.1, "eps": 0.02},
])
def test_reduce_on_plateau_is_torchs(kwargs):
    values = [1.0, 0.9, 0.95, 0.95, 0.91, 0.9, 0.92, 0.7, 0.71, 0.72, 0.73, 0.74, 0.69, 0.75, 0.8, 0.9,
              0.85, 0.86, 0.87, 0.88, 0.89, 0.5, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=BASE_LR)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kwargs)
    ours = optim.ReduceLROnPlateau(**kwargs)
    our_opt = optim.SGD(BASE_LR, schedule=ours)
    theirs, mine = [], []
    for value in values:
        opt.step()
        scheduler.step(value)
        ours.step(value)
        theirs.append(opt.param_groups[0]["lr"])
        mine.append(our_opt.lr)
    np.testing.assert_allclose(mine, theirs, rtol=1e-12)
    assert len(set(mine)) > 1  # the rate did change


def _data(n=96, width=12, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, width)), rng.integers(0, classes, n)


def _model(backend, dtype=np.float64):
    return nn.Sequential(nn.Linear(12, 9, seed=1), nn.ReLU(), nn.Linear(9, 4, seed=2), backend=backend, dtype=dtype)


class RateRecorder(nn.Callback):
    """The optimizer's lr as each batch starts training (read at the batch's end, before a
    schedule placed ahead of this recorder moved it: so the recorder goes first)."""

    def __init__(self, optimizer):
        self.optimizer, self.per_batch, self.per_epoch = optimizer, [], []

    def on_epoch_begin(self, epoch, steps):
        self.per_epoch.append(self.optimizer.lr)

    def on_batch_end(self, epoch, step, steps, logs):
        self.per_batch.append(self.optimizer.lr)


def test_fit_steps_an_epoch_schedule_after_each_epoch():
    x, y = _data()
    opt = optim.SGD(BASE_LR, schedule=optim.StepLR(2, gamma=0.5))
    recorder = RateRecorder(opt)
    _model("numpy").fit(x, y, epochs=5, batch_size=32, optimizer=opt, callbacks=[recorder], verbose=False)
    assert recorder.per_epoch == [0.1, 0.1, 0.05, 0.05, 0.025]
    assert opt.lr == 0.025 and opt.schedule.last_epoch == 5


def test_fit_steps_a_step_schedule_after_each_batch():
    x, y = _data()  # 3 batches per epoch
    opt = optim.SGD(BASE_LR, schedule=optim.LinearLR(1.0, 0.0, total_iters=6, interval="step"))
    recorder = RateRecorder(opt)
    _model("numpy").fit(x, y, epochs=2, batch_size=32, optimizer=opt, callbacks=[recorder], verbose=False)
    # the recorder reads the lr after the schedule stepped past the batch
    np.testing.assert_allclose(recorder.per_batch, [0.1 * (1 - k / 6) for k in range(1, 7)], atol=1e-17)
    assert opt.lr == 0.0


def test_a_schedule_given_as_a_callback_too_steps_once():
    x, y = _data()
    schedule = optim.ExponentialLR(0.5)
    opt = optim.SGD(BASE_LR, schedule=schedule)
    _model("numpy").fit(x, y, epochs=3, batch_size=32, optimizer=opt, callbacks=[schedule], verbose=False)
    assert opt.lr == pytest.approx(0.1 * 0.5**3)


FUSED = [b for b in ("cython", "numba") if b in nnkern.available_backends()]


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("make_optimizer", [
    lambda: optim.SGD(0.1, momentum=0.9, schedule=optim.CosineAnnealingLR(6, interval="step")),
    lambda: optim.AdamW(0.01, schedule=optim.SequentialLR([optim.LinearLR(0.1, total_iters=2, interval="step"),
                                                           optim.ExponentialLR(0.7)], [2], interval="step")),
], ids=["sgd_cosine", "adamw_warmup"])
def test_the_fused_engine_follows_the_schedule(backend, make_optimizer, monkeypatch):
    """The fused step reads the optimizer's lr at every step: the same numbers as the
    layer-by-layer path, which follows the schedule through optim.step()."""
    x, y = _data()
    results = []
    for fused in (False, True):
        model = _model(backend)
        if fused:
            monkeypatch.setattr(model, "train_step", lambda *args: pytest.fail("fit left the fused engine"))
        history = model.fit(x, y, epochs=3, batch_size=32, optimizer=make_optimizer(), seed=1, verbose=False,
                            fused=fused)
        results.append((history.history["loss"], [p.copy() for p in model.parameters()]))
    (want_loss, want_params), (got_loss, got_params) = results
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    constant = _model(backend)
    constant.fit(x, y, epochs=3, batch_size=32, optimizer=make_optimizer().__class__(0.01), seed=1, verbose=False)
    assert not np.allclose(constant.parameters()[0], got_params[0])


def test_reduce_on_plateau_steps_with_the_monitored_log():
    x, y = _data()
    # after the first epoch no loss beats the best by the (absolute) threshold
    schedule = optim.ReduceLROnPlateau(monitor="loss", patience=0, factor=0.5, threshold=1e9, threshold_mode="abs")
    opt = optim.SGD(BASE_LR, schedule=schedule)
    _model("numpy").fit(x, y, epochs=3, batch_size=32, optimizer=opt, verbose=False)
    assert opt.lr == pytest.approx(0.1 * 0.5**2)  # the first epoch sets the best, then two bad ones


def test_reduce_on_plateau_needs_validation_data_for_val_logs():
    x, y = _data()
    opt = optim.SGD(BASE_LR, schedule=optim.ReduceLROnPlateau())
    model = _model("numpy")
    before = [p.copy() for p in model.parameters()]
    with pytest.raises(ValueError, match="monitors 'val_loss'.*validation_data"):
        model.fit(x, y, epochs=1, optimizer=opt, verbose=False)
    for got, want in zip(model.parameters(), before):  # refused before any training
        np.testing.assert_array_equal(got, want)


def test_state_dict_resumes_the_schedule():
    opt = optim.SGD(BASE_LR, momentum=0.9, schedule=optim.CosineAnnealingLR(10))
    for _ in range(4):
        opt.schedule.step()
    state = opt.state_dict()
    resumed = optim.SGD(BASE_LR, momentum=0.9, schedule=optim.CosineAnnealingLR(10))
    resumed.load_state_dict(state)
    assert resumed.lr == opt.lr and resumed.schedule.last_epoch == 4
    opt.schedule.step()
    resumed.schedule.step()
    assert resumed.lr == opt.lr


def test_replacing_the_schedule_detaches_the_old_one():
    first = optim.StepLR(1)
    opt = optim.SGD(BASE_LR, schedule=first)
    opt.schedule = optim.ExponentialLR(0.5)
    assert first.optimizer is None and opt.schedule.base_lr == BASE_LR
    opt.schedule = None
    assert opt.schedule is None and opt.lr == BASE_LR


@pytest.mark.parametrize("make, error, message", [
    (lambda: optim.StepLR(0), ValueError, "step_size must be >= 1"),
    (lambda: optim.StepLR(2.5), TypeError, "step_size must be an integer"),
    (lambda: optim.StepLR(2, interval="batch"), ValueError, "interval must be 'epoch' or 'step'"),
    (lambda: optim.CosineAnnealingLR(10, eta_min=-1), ValueError, "eta_min must be a finite number"),
    (lambda: optim.LinearLR(0.0), ValueError, r"start_factor must be a finite number in \(0"),
    (lambda: optim.LambdaLR(0.5), TypeError, "lr_lambda must be a function"),
    (lambda: optim.SequentialLR([optim.StepLR(1), optim.StepLR(2)], []), ValueError, "2 schedules need 1 milestones"),
    (lambda: optim.SequentialLR([optim.StepLR(1), optim.ReduceLROnPlateau()], [3]), TypeError,
     "schedule of the epoch count"),
    (lambda: optim.ReduceLROnPlateau(factor=1.0), ValueError, "factor must be < 1"),
    (lambda: optim.ReduceLROnPlateau(mode="up"), ValueError, "mode must be 'min' or 'max'"),
    (lambda: optim.SGD(0.1, schedule="cosine"), TypeError, "schedule must be an nnkern.optim schedule"),
    (lambda: optim.StepLR(2).step(), RuntimeError, "drives no optimizer yet"),
    (lambda: optim.SGD(0.1, schedule=optim.LambdaLR(lambda e: -1.0)), ValueError, "lr must be finite and >= 0"),
])
def test_bad_schedules(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_one_schedule_drives_one_optimizer():
    schedule = optim.StepLR(2)
    optim.SGD(0.1, schedule=schedule)
    with pytest.raises(ValueError, match="already drives another optimizer"):
        optim.Adam(schedule=schedule)


def test_cosine_rates_in_closed_form():
    rates = our_rates(optim.CosineAnnealingLR(4), steps=4)
    np.testing.assert_allclose(rates, [0.1 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(5)], atol=1e-17)
