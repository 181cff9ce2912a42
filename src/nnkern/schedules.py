"""Learning-rate schedules with torch.optim.lr_scheduler's numbers, as objects an
optimizer takes (``optim.SGD(0.1, schedule=optim.StepLR(10))``); :mod:`nnkern.optim`
exports them. ``fit`` steps a schedule after every epoch, or with ``interval="step"``
after every batch.
"""

from __future__ import annotations

import bisect
import math

from . import _validate

_INTERVALS = ("epoch", "step")


# How the schedules word a rate factor's bound >= 0.
_NONNEGATIVE = "a finite number in [0, inf]"


class LRScheduler:
    """A learning-rate schedule, which an optimizer takes::

        opt = optim.SGD(0.1, momentum=0.9, schedule=optim.CosineAnnealingLR(T_max=10))

    (or ``opt.schedule = ...``). The schedule's base rate is the optimizer's ``lr`` when
    it takes the schedule; from then on ``step()`` advances the schedule by one epoch
    (``interval="epoch"``, the default) or by one optimizer step (``interval="step"``)
    and sets ``opt.lr``. :meth:`nnkern.nn.Sequential.fit` steps the schedule of its
    optimizer after every epoch or batch by itself (as it does in the fused training
    engine, which reads ``lr`` at every step); a hand-written loop calls ``step()`` where
    a torch loop calls ``scheduler.step()``.

    The rates are torch.optim.lr_scheduler's: after ``k`` calls of ``step()``,
    ``get_last_lr()`` is what torch's scheduler of the same name and arguments gives
    after ``k`` calls (to rounding; here computed in closed form from the base rate).
    Unlike torch, the schedule is given to the optimizer rather than the optimizer to
    the schedule.
    """

    def __init__(self, *, interval: str = "epoch"):
        self.interval = _validate.choice(type(self).__name__, "interval", interval, _INTERVALS)
        self.optimizer = None  # the optimizer it sets the rate of, once attached
        self.base_lr: float | None = None
        self.last_epoch = 0
        self._last_lr: float | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args}{', ' if args else ''}interval={self.interval!r})"

    def _arguments(self) -> dict:
        return {}

    # -- driving an optimizer -----------------------------------------------------------

    def attach(self, optimizer) -> None:
        """Drive ``optimizer``'s learning rate from now on, from its current ``lr`` as the
        base rate and from the start of the schedule (an optimizer calls this when it
        takes the schedule)."""
        if self.optimizer is not None and self.optimizer is not optimizer:
            raise ValueError(f"{type(self).__name__}: this schedule already drives another optimizer; "
                             "create one schedule per optimizer")
        self.optimizer = optimizer
        self.base_lr = optimizer.hyperparameters["lr"]
        self.last_epoch = 0
        self._set_lr(self.lr_at(0))

    def _set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr
        self._last_lr = self.optimizer.lr

    def _require_optimizer(self, what: str) -> None:
        if self.optimizer is None:
            raise RuntimeError(f"{type(self).__name__}.{what}: the schedule drives no optimizer yet; "
                               f"give it to one, e.g. optim.SGD(0.1, schedule=...)")

    def lr_at(self, epoch: int) -> float:
        """The learning rate after ``epoch`` steps of the schedule (from the base rate)."""
        self._require_optimizer("lr_at")
        return self._rate(epoch, self.base_lr)

    def _rate(self, epoch: int, base_lr: float) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advance the schedule by one epoch (or step) and set the optimizer's lr."""
        self._require_optimizer("step")
        self.last_epoch += 1
        self._set_lr(self.lr_at(self.last_epoch))

    def get_last_lr(self) -> list[float]:
        """The learning rate the schedule set last, as a one-element list (torch's
        schedulers give one rate per parameter group; an nnkern optimizer has one)."""
        self._require_optimizer("get_last_lr")
        return [self._last_lr]

    # -- state ----------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The schedule's position (and base rate), to resume it with :meth:`load_state_dict`."""
        return {"type": type(self).__name__, "base_lr": self.base_lr, "last_epoch": self.last_epoch,
                "last_lr": self._last_lr}

    def load_state_dict(self, state: dict) -> None:
        name = type(self).__name__
        if state.get("type") != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a {state.get('type')!r} schedule")
        self.base_lr = state["base_lr"]
        self.last_epoch = _validate.integer(name, "last_epoch", state["last_epoch"], minimum=0)
        self._last_lr = state["last_lr"]
        if self.optimizer is not None and self._last_lr is not None:
            self.optimizer.lr = self._last_lr  # where the schedule had brought it

    # -- the hooks of Sequential.fit (a schedule is a fit callback) ------------------------

    def on_batch_end(self, epoch: int, step: int, steps: int, logs: dict) -> None:
        if self.interval == "step":
            self.step()

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.interval == "epoch":
            self.step()


class StepLR(LRScheduler):
    """As torch's StepLR: ``base_lr * gamma ** (epoch // step_size)``."""

    def __init__(self, step_size: int, gamma: float = 0.1, *, interval: str = "epoch"):
        super().__init__(interval=interval)
        self.step_size = _validate.integer("StepLR", "step_size", step_size, minimum=1)
        self.gamma = _validate.real("StepLR", "gamma", gamma, low=0, expected=_NONNEGATIVE)

    def _arguments(self):
        return {"step_size": self.step_size, "gamma": self.gamma}

    def _rate(self, epoch, base_lr):
        return base_lr * self.gamma ** (epoch // self.step_size)


class MultiStepLR(LRScheduler):
    """As torch's MultiStepLR: the rate is multiplied by ``gamma`` at each milestone
    (a milestone listed twice counts twice)."""

    def __init__(self, milestones, gamma: float = 0.1, *, interval: str = "epoch"):
        super().__init__(interval=interval)
        self.milestones = sorted(_validate.integer("MultiStepLR", "milestone", m, minimum=1) for m in milestones)
        self.gamma = _validate.real("MultiStepLR", "gamma", gamma, low=0, expected=_NONNEGATIVE)

    def _arguments(self):
        return {"milestones": self.milestones, "gamma": self.gamma}

    def _rate(self, epoch, base_lr):
        return base_lr * self.gamma ** bisect.bisect_right(self.milestones, epoch)


class ExponentialLR(LRScheduler):
    """As torch's ExponentialLR: ``base_lr * gamma ** epoch``."""

    def __init__(self, gamma: float, *, interval: str = "epoch"):
        super().__init__(interval=interval)
        self.gamma = _validate.real("ExponentialLR", "gamma", gamma, low=0, expected=_NONNEGATIVE)

    def _arguments(self):
        return {"gamma": self.gamma}

    def _rate(self, epoch, base_lr):
        return base_lr * self.gamma**epoch


class CosineAnnealingLR(LRScheduler):
    """As torch's CosineAnnealingLR: ``eta_min + (base_lr - eta_min) * (1 + cos(pi *
    epoch / T_max)) / 2``: from the base rate down to ``eta_min`` over ``T_max`` epochs
    (or steps), and back up over the next ``T_max`` if the schedule runs on."""

    def __init__(self, T_max: int, eta_min: float = 0.0, *, interval: str = "epoch"):  # noqa: N803 (torch's name)
        super().__init__(interval=interval)
        self.T_max = _validate.integer("CosineAnnealingLR", "T_max", T_max, minimum=1)
        self.eta_min = _validate.real("CosineAnnealingLR", "eta_min", eta_min, low=0, expected=_NONNEGATIVE)

    def _arguments(self):
        return {"T_max": self.T_max, "eta_min": self.eta_min}

    def _rate(self, epoch, base_lr):
        return self.eta_min + (base_lr - self.eta_min) * (1 + math.cos(math.pi * epoch / self.T_max)) / 2


class LinearLR(LRScheduler):
    """As torch's LinearLR: the rate's factor goes linearly from ``start_factor`` to
    ``end_factor`` over ``total_iters`` epochs (or steps), then stays there. A linear
    warm-up is ``LinearLR(start_factor=0.01, total_iters=n)``; a linear decay to zero over
    the whole training, ``LinearLR(1.0, 0.0, total_iters=steps, interval="step")``."""

    def __init__(self, start_factor: float = 1.0 / 3, end_factor: float = 1.0, total_iters: int = 5, *,
                 interval: str = "epoch"):
        super().__init__(interval=interval)
        self.start_factor = _validate.real("LinearLR", "start_factor", start_factor, low=0, high=1, low_open=True,
                                           expected="a finite number in (0, 1]")
        self.end_factor = _validate.real("LinearLR", "end_factor", end_factor, low=0, high=1,
                                         expected="a finite number in [0, 1]")
        self.total_iters = _validate.integer("LinearLR", "total_iters", total_iters, minimum=1)

    def _arguments(self):
        return {"start_factor": self.start_factor, "end_factor": self.end_factor, "total_iters": self.total_iters}

    def _rate(self, epoch, base_lr):
        done = min(epoch, self.total_iters) / self.total_iters
        return base_lr * (self.start_factor + (self.end_factor - self.start_factor) * done)


class LambdaLR(LRScheduler):
    """As torch's LambdaLR: ``base_lr * lr_lambda(epoch)`` for a function of the epoch
    (or step) count. Its state does not include the function."""

    def __init__(self, lr_lambda, *, interval: str = "epoch"):
        super().__init__(interval=interval)
        if not callable(lr_lambda):
            raise TypeError(f"LambdaLR: lr_lambda must be a function of the epoch, got {lr_lambda!r}")
        self.lr_lambda = lr_lambda

    def _arguments(self):
        return {"lr_lambda": self.lr_lambda}

    def _rate(self, epoch, base_lr):
        return base_lr * float(self.lr_lambda(epoch))


class SequentialLR(LRScheduler):
    """As torch's SequentialLR: ``schedules[0]`` until ``milestones[0]``, then
    ``schedules[1]`` started afresh, and so on; every part has the optimizer's base
    rate. A warm-up followed by a cosine decay::

        optim.SequentialLR([optim.LinearLR(0.1, total_iters=5), optim.CosineAnnealingLR(45)],
                           milestones=[5])

    The parts are given unattached; their own ``interval`` is ignored for this one's."""

    def __init__(self, schedules, milestones, *, interval: str = "epoch"):
        super().__init__(interval=interval)
        self.schedules = list(schedules)
        self.milestones = [_validate.integer("SequentialLR", "milestone", m, minimum=1) for m in milestones]
        if not self.schedules or len(self.milestones) != len(self.schedules) - 1:
            raise ValueError(f"SequentialLR: {len(self.schedules)} schedules need {max(len(self.schedules) - 1, 0)} "
                             f"milestones, got {len(self.milestones)}")
        if self.milestones != sorted(set(self.milestones)):
            raise ValueError(f"SequentialLR: milestones must increase, got {self.milestones}")
        for part in self.schedules:
            if not isinstance(part, LRScheduler) or isinstance(part, ReduceLROnPlateau):
                raise TypeError(f"SequentialLR: every part must be a schedule of the epoch count, got {part!r}")
            if part.optimizer is not None:
                raise ValueError(f"SequentialLR: {part!r} already drives an optimizer; give the parts unattached")

    def _arguments(self):
        return {"schedules": self.schedules, "milestones": self.milestones}

    def _rate(self, epoch, base_lr):
        part = bisect.bisect_right(self.milestones, epoch)
        start = self.milestones[part - 1] if part else 0
        return self.schedules[part]._rate(epoch - start, base_lr)


class ReduceLROnPlateau(LRScheduler):
    """As torch's ReduceLROnPlateau: multiply the rate by ``factor`` (not below
    ``min_lr``) once the monitored value has not improved for more than ``patience``
    epochs, then wait ``cooldown`` epochs. ``step(value)`` takes the epoch's value; in
    ``fit`` it is ``logs[monitor]`` ("val_loss" by default, which needs
    ``validation_data``; "loss", "accuracy", "val_accuracy" are the others).
    ``mode="max"`` for values that should grow; ``threshold_mode`` "rel" or "abs" says
    what counts as an improvement (as in torch)."""

    def __init__(self, monitor: str = "val_loss", mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                 eps: float = 1e-8):
        super().__init__(interval="epoch")
        name = "ReduceLROnPlateau"
        if not isinstance(monitor, str):
            raise TypeError(f"{name}: monitor must be the name of a fit log such as 'val_loss', got {monitor!r}")
        _validate.choice(name, "mode", mode, ("min", "max"))
        _validate.choice(name, "threshold_mode", threshold_mode, ("rel", "abs"))
        factor = _validate.real(name, "factor", factor, low=0, high=1, high_open=True)
        self.monitor, self.mode, self.factor, self.threshold_mode = monitor, mode, factor, threshold_mode
        self.patience = _validate.integer(name, "patience", patience, minimum=0)
        self.threshold = _validate.real(name, "threshold", threshold, low=0, expected=_NONNEGATIVE)
        self.cooldown = _validate.integer(name, "cooldown", cooldown, minimum=0)
        self.min_lr = _validate.real(name, "min_lr", min_lr, low=0, expected=_NONNEGATIVE)
        self.eps = _validate.real(name, "eps", eps, low=0, expected=_NONNEGATIVE)
        self._reset()

    def _arguments(self):
        return {"monitor": self.monitor, "mode": self.mode, "factor": self.factor, "patience": self.patience}

    def _reset(self) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0

    def attach(self, optimizer) -> None:
        super().attach(optimizer)
        self._reset()

    def _rate(self, epoch, base_lr):
        return base_lr if epoch == 0 else self.optimizer.lr  # the rate only changes in step()

    def _is_better(self, value: float) -> bool:
        if self.mode == "min":
            return value < (self.best * (1.0 - self.threshold) if self.threshold_mode == "rel"
                            else self.best - self.threshold)
        return value > (self.best * (1.0 + self.threshold) if self.threshold_mode == "rel"
                        else self.best + self.threshold)

    def step(self, value=None) -> None:  # noqa: D417
        """Take the epoch's monitored ``value`` and lower the rate if it has stopped improving."""
        self._require_optimizer("step")
        if value is None:
            raise TypeError(f"ReduceLROnPlateau.step: takes the monitored value (e.g. the epoch's {self.monitor})")
        value = float(value)
        self.last_epoch += 1
        if self._is_better(value):
            self.best, self.num_bad_epochs = value, 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs in the cooldown do not count
        lr = self.optimizer.lr
        if self.num_bad_epochs > self.patience:
            new_lr = max(lr * self.factor, self.min_lr)
            if lr - new_lr > self.eps:
                lr = new_lr
            self.cooldown_counter, self.num_bad_epochs = self.cooldown, 0
        self._set_lr(lr)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "best": self.best, "num_bad_epochs": self.num_bad_epochs,
                "cooldown_counter": self.cooldown_counter}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.best = float(state["best"])
        self.num_bad_epochs = int(state["num_bad_epochs"])
        self.cooldown_counter = int(state["cooldown_counter"])

    def on_train_begin(self, info: dict) -> None:
        if self.monitor.startswith("val_") and info.get("validation") is False:
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, which fit reports only with "
                             "validation_data; pass validation_data or monitor='loss'")

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.monitor not in logs:
            raise ValueError(f"ReduceLROnPlateau monitors {self.monitor!r}, but fit reports only "
                             f"{', '.join(sorted(k for k in logs if k != 'seconds'))}")
        self.step(logs[self.monitor])


SCHEDULES = {cls.__name__: cls for cls in (StepLR, MultiStepLR, ExponentialLR, CosineAnnealingLR, LinearLR,
                                           LambdaLR, SequentialLR, ReduceLROnPlateau)}
