"""Optimizers: the update rules of torch.optim, run by the in-place update kernels of
:mod:`nnkern.ops` (one pass over each parameter per step), and learning-rate schedules
with torch.optim.lr_scheduler's numbers.

Two ways to use one:

* Keras style: construct it with hyperparameters only and hand it to ``model.fit``,
  which binds it to the model's parameters and gradients::

      model.fit(x, y, optimizer=optim.Adam(1e-3), epochs=5, batch_size=64)

* torch style: bind it at construction to a model (or to a list of (parameter,
  gradient) array pairs), then call ``step()`` after each backward pass::

      opt = optim.SGD(model, lr=0.1, momentum=0.9)
      model.compute_gradients(xb, yb, "cross_entropy"); opt.step()

``opt.bind(params, grads, backend=None)`` does the binding explicitly. The first
positional argument is the learning rate or what to bind to: ``SGD(0.1)`` and
``SGD(model, lr=0.1)`` both work.

Weight decay is PyTorch's L2 form: the gradient becomes ``g + weight_decay * p`` before
the update. It is added in place into the gradient array (so after ``step()`` the
gradients hold the decayed values) by the backend's ``sgd_update`` kernel run with the
negative rate ``-weight_decay`` (``g -= (-wd) * p``): a second pass over the parameter,
with no NumPy arithmetic. ``ops.sgd_update`` refuses negative rates, so this one step
calls the validated backend kernel directly on the flat arrays checked at bind time.
:class:`AdamW` decays the parameter itself instead (torch.optim.AdamW's decoupled form).

Learning-rate schedules (:class:`StepLR`, :class:`MultiStepLR`, :class:`ExponentialLR`,
:class:`CosineAnnealingLR`, :class:`LinearLR`, :class:`LambdaLR`, :class:`SequentialLR`,
:class:`ReduceLROnPlateau`) are objects an optimizer takes, stepped by ``fit`` after each
epoch (or, with ``interval="step"``, after each batch)::

    opt = optim.AdamW(1e-3, schedule=optim.SequentialLR(
        [optim.LinearLR(0.01, total_iters=500, interval="step"),
         optim.CosineAnnealingLR(9500, interval="step")], milestones=[500], interval="step"))
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import numbers

import numpy as np

from . import _arrays, _validate, ops
from ._backend import backend_module, get_backend
from ._clip import clip_grad_norm_
from .backends import UPDATE_RULE_CODES

__all__ = ["Optimizer", "UpdateRule", "clip_grad_norm_", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW", "get", "OPTIMIZERS",
           "LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "LambdaLR",
           "SequentialLR", "ReduceLROnPlateau", "SCHEDULES"]

_UNSET = object()


def _hyperparameter(owner: str, name: str, value, *, below_one: bool = False) -> float:
    if below_one:
        return _validate.real(owner, name, value, low=0, high=1, high_open=True, expected="in [0, 1)")
    return _validate.real(owner, name, value, low=0, expected="finite and >= 0")


@dataclasses.dataclass(frozen=True)
class UpdateRule:
    """An optimizer's update rule as the fused training engines run it: the rule's name
    (one of :data:`nnkern.backends.UPDATE_RULES`), its code in the compiled kernels, and
    the hyperparameters now in force (``a``, ``b``: the rule's own, e.g. momentum, or
    Adam's beta1 and beta2; 0 where it has none)."""

    name: str
    code: int
    lr: float
    a: float = 0.0
    b: float = 0.0
    eps: float = 0.0
    weight_decay: float = 0.0
    bias_weight_decay: float = 0.0  # the 1-D parameters' (biases): weight_decay, or 0 where they do not decay


class Optimizer:
    """Base class: holds the bound parameters, their gradients and per-parameter state.

    Subclasses set ``STATE`` (the names of the per-parameter state arrays, created as
    zeros at bind time) and implement ``_update(p, g, state)`` with one ops call. Those
    whose rule the fused engines also run set ``RULE``: the rule's name in
    :data:`nnkern.backends.UPDATE_RULES` and the names of the hyperparameters it takes as
    ``a`` and ``b`` (a subclass that overrides ``_update`` without a ``RULE`` of its own
    trains on the layer-by-layer path, which calls its ``_update``).
    """

    STATE: tuple[str, ...] = ()
    RULE: tuple[str, str | None, str | None] | None = None
    # Whether weight_decay is the L2 term added to the gradient before the update (torch's
    # form for every optimizer but AdamW, whose rule decays the parameter itself).
    L2_WEIGHT_DECAY = True
    # Whether 1-D parameters (biases) decay too, as in torch (a subclass that sets False
    # decays the weight matrices alone, as scikit-learn's L2 penalty does).
    DECAY_BIASES = True

    def __init__(self, lr_or_params, lr, default_lr, *, schedule=None, **hyperparameters):
        name = type(self).__name__
        target = None
        if isinstance(lr_or_params, numbers.Real) and not isinstance(lr_or_params, bool):
            if lr is not _UNSET:
                raise TypeError(f"{name}: lr given twice (positionally and as lr=)")
            lr = lr_or_params
        elif lr_or_params is not _UNSET:
            target = lr_or_params
        self.hyperparameters = {"lr": _hyperparameter(name, "lr", default_lr if lr is _UNSET else lr)}
        for key, value in hyperparameters.items():
            self.hyperparameters[key] = _hyperparameter(name, key, value, below_one=key.startswith("beta"))
        self.params: list = []
        self.grads: list = []
        self.state: list[dict] = []
        self.t = 0
        self.backend: str | None = None
        self._pending_state: dict | None = None
        self.schedule = schedule
        if target is not None:
            self._bind_target(target)

    def __getattr__(self, key):
        hyperparameters = self.__dict__.get("hyperparameters", {})
        if key in hyperparameters:
            return hyperparameters[key]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {key!r}")

    def __setattr__(self, key, value):
        hyperparameters = self.__dict__.get("hyperparameters", {})
        if key in hyperparameters:  # opt.lr = 0.01 changes the rate used by the next step
            if key == "momentum" and bool(value) != bool(hyperparameters[key]):
                raise ValueError(f"{type(self).__name__}: momentum cannot be switched on or off after construction")
            hyperparameters[key] = _hyperparameter(type(self).__name__, key, value, below_one=key.startswith("beta"))
        else:
            super().__setattr__(key, value)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters.items())
        if self.schedule is not None:
            args += f", schedule={self.schedule!r}"
        return f"{type(self).__name__}({args})"

    @property
    def schedule(self) -> LRScheduler | None:
        """The learning-rate schedule that sets ``lr`` (None: lr stays as set). Assigning
        one attaches it: its base rate is the current ``lr``."""
        return self.__dict__.get("_schedule")

    @schedule.setter
    def schedule(self, schedule) -> None:
        if schedule is not None and not isinstance(schedule, LRScheduler):
            raise TypeError(f"{type(self).__name__}: schedule must be an nnkern.optim schedule such as "
                            f"optim.StepLR(10), got {schedule!r}")
        previous = self.__dict__.get("_schedule")
        if schedule is not None:
            schedule.attach(self)
        if previous is not None and previous is not schedule:
            previous.optimizer = None
        self.__dict__["_schedule"] = schedule

    # -- binding --------------------------------------------------------------------

    def _bind_target(self, target) -> None:
        if hasattr(target, "parameters") and hasattr(target, "gradients"):
            self.bind(target.parameters(), target.gradients(), backend=getattr(target, "backend", None))
            return
        pairs = list(target)
        if not all(isinstance(pair, (tuple, list)) and len(pair) == 2 for pair in pairs):
            raise TypeError(
                f"{type(self).__name__}: bind to a model or to (parameter, gradient) pairs; "
                "parameters alone carry no gradients in nnkern"
            )
        self.bind([p for p, _ in pairs], [g for _, g in pairs])

    def bind(self, params, grads, *, backend: str | None = None) -> None:
        """Update ``params`` from ``grads`` (lists of arrays in the same order) with the
        kernels of ``backend`` (None: the current backend). State starts at zero."""
        name = type(self).__name__
        params, grads = list(params), list(grads)
        if len(params) != len(grads):
            raise ValueError(f"{name}: {len(params)} parameters but {len(grads)} gradients")
        for i, (p, g) in enumerate(zip(params, grads)):
            if tuple(p.shape) != tuple(g.shape):
                raise ValueError(f"{name}: parameter {i} has shape {tuple(p.shape)} but its gradient {tuple(g.shape)}")
            if np.dtype(p.dtype) != np.dtype(g.dtype):
                raise TypeError(f"{name}: parameter {i} has dtype {p.dtype} but its gradient {g.dtype}")
            for what, a in (("parameter", p), ("gradient", g)):
                if isinstance(a, np.ndarray) and not a.flags.c_contiguous:
                    raise ValueError(f"{name}: {what} {i} must be C-contiguous (it is updated in place)")
        self.backend = get_backend() if backend is None else backend
        self._kernels = backend_module(self.backend)
        self.params, self.grads = params, grads
        # state lives where its parameter lives (device memory for device parameters)
        self.state = [{key: _arrays.zeros(p.shape, p.dtype, self.backend if _arrays.is_device_array(p) else "numpy")
                       for key in self.STATE} for p in params]
        self.t = 0
        if self._pending_state is not None:
            pending, self._pending_state = self._pending_state, None
            self.load_state_dict(pending)

    def is_bound_to(self, params) -> bool:
        """Whether this optimizer updates exactly these parameter arrays."""
        params = list(params)
        return len(params) == len(self.params) and all(a is b for a, b in zip(params, self.params))

    # -- stepping -------------------------------------------------------------------

    def zero_grad(self) -> None:
        """Set the bound gradients to zero (nnkern's backward overwrites gradients, so
        this is only needed by code that relies on it, as torch-style loops do)."""
        for g in self.grads:
            g[...] = 0

    def step(self) -> None:
        """One update of every bound parameter from its gradient."""
        if not self.params:
            raise RuntimeError(
                f"{type(self).__name__}.step: not bound to any parameters; pass it to model.fit, "
                "construct it with the model, or call bind(params, grads)"
            )
        self.t += 1
        weight_decay = self.hyperparameters.get("weight_decay", 0.0) if self.L2_WEIGHT_DECAY else 0.0
        for p, g, state in zip(self.params, self.grads, self.state):
            if weight_decay and (self.DECAY_BIASES or len(p.shape) > 1):
                self._kernels.sgd_update(g.reshape(-1), p.reshape(-1), -weight_decay)
            self._update(p, g, state)

    def _update(self, p, g, state: dict) -> None:
        raise NotImplementedError

    # -- what the fused training engines read -----------------------------------------

    def _rule_name(self, name: str) -> str:
        return name

    def update_rule(self) -> UpdateRule | None:
        """The rule the fused training engines run for this optimizer, with the
        hyperparameters now in force; None when they have none for it."""
        owner = next(cls for cls in type(self).__mro__ if "_update" in cls.__dict__)
        spec = owner.__dict__.get("RULE")
        if spec is None:
            return None
        name, a_name, b_name = spec
        name = self._rule_name(name)
        h = self.hyperparameters
        weight_decay = h.get("weight_decay", 0.0)
        return UpdateRule(name, UPDATE_RULE_CODES[name], h["lr"], h[a_name] if a_name else 0.0,
                          h[b_name] if b_name else 0.0, h.get("eps", 0.0), weight_decay,
                          weight_decay if self.DECAY_BIASES else 0.0)

    def state_of(self, param) -> tuple:
        """The state arrays of the bound parameter ``param`` (the very array), in the
        order of ``STATE``: what an engine updates in place."""
        for p, state in zip(self.params, self.state):
            if p is param:
                return tuple(state.values())
        raise ValueError(f"{type(self).__name__} is not bound to this parameter of shape {tuple(param.shape)}")

    def count_steps(self, steps: int) -> int:
        """Count ``steps`` more steps taken (by an engine that updated the parameters
        itself) and return the step count, ``t``: the 1-based number of the last step."""
        self.t += int(steps)
        return self.t

    def upcoming_rates(self, steps: int) -> list[float]:
        """The learning rate of each of the next ``steps`` steps: the rate now, and where
        the schedule steps after every batch (as ``fit`` steps it), the rates it will set."""
        lr = self.hyperparameters["lr"]
        schedule = self.schedule
        if schedule is None or schedule.interval != "step":
            return [lr] * steps
        return [lr] + [schedule.lr_at(schedule.last_epoch + k) for k in range(1, steps)]

    # -- state ----------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Hyperparameters, the step count and host copies of the per-parameter state."""
        state = {
            "type": type(self).__name__,
            "hyperparameters": dict(self.hyperparameters),
            "t": self.t,
            "state": [{key: _arrays.host_copy(a) for key, a in s.items()} for s in self.state],
        }
        if self.schedule is not None:
            state["schedule"] = self.schedule.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore what :meth:`state_dict` returned. Before the optimizer is bound the
        per-parameter state is kept and applied when ``fit`` (or ``bind``) binds it."""
        name = type(self).__name__
        if state_dict.get("type") != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a {state_dict.get('type')!r} optimizer")
        hyperparameters = dict(state_dict["hyperparameters"])
        if set(hyperparameters) != set(self.hyperparameters):
            raise ValueError(
                f"{name}.load_state_dict: hyperparameters {sorted(hyperparameters)}, expected {sorted(self.hyperparameters)}"
            )
        for key, value in hyperparameters.items():
            self.hyperparameters[key] = _hyperparameter(name, key, value, below_one=key.startswith("beta"))
        if state_dict.get("schedule") is not None and self.schedule is not None:
            self.schedule.load_state_dict(state_dict["schedule"])
        if not self.params:
            self._pending_state = state_dict
            return
        states = state_dict["state"]
        if len(states) != len(self.state):
            raise ValueError(f"{name}.load_state_dict: state for {len(states)} parameters, bound to {len(self.state)}")
        for i, (saved, own) in enumerate(zip(states, self.state)):
            if set(saved) != set(own):
                raise ValueError(f"{name}.load_state_dict: parameter {i} has state {sorted(saved)}, expected {sorted(own)}")
            for key, array in own.items():
                value = np.asarray(saved[key])
                if value.shape != tuple(array.shape):
                    raise ValueError(
                        f"{name}.load_state_dict: {key} of parameter {i} has shape {value.shape}, expected {tuple(array.shape)}"
                    )
                array[...] = np.ascontiguousarray(value, dtype=array.dtype)
        self.t = int(state_dict["t"])


class SGD(Optimizer):
    """Stochastic gradient descent, as torch.optim.SGD: ``p -= lr * g``; with momentum
    ``v = momentum * v + g; p -= lr * v`` (v starts at zero)."""

    RULE = ("sgd", "momentum", None)

    def __init__(self, lr_or_params=_UNSET, /, lr=_UNSET, momentum=0.0, weight_decay=0.0, schedule=None):
        self.STATE = ("v",) if momentum else ()  # before a torch-style bind creates the state
        super().__init__(lr_or_params, lr, 0.01, momentum=momentum, weight_decay=weight_decay, schedule=schedule)

    def _update(self, p, g, state):
        h = self.hyperparameters
        if h["momentum"]:
            ops.momentum_update(p, g, state["v"], h["lr"], h["momentum"], backend=self.backend)
        else:
            ops.sgd_update(p, g, h["lr"], backend=self.backend)

    def _rule_name(self, name):
        return "momentum" if self.hyperparameters["momentum"] else name


class Adagrad(Optimizer):
    """As torch.optim.Adagrad: ``h += g * g; p -= lr * g / (sqrt(h) + eps)``."""

    STATE = ("h",)
    RULE = ("adagrad", None, None)

    def __init__(self, lr_or_params=_UNSET, /, lr=_UNSET, eps=1e-10, weight_decay=0.0, schedule=None):
        super().__init__(lr_or_params, lr, 0.01, eps=eps, weight_decay=weight_decay, schedule=schedule)

    def _update(self, p, g, state):
        h = self.hyperparameters
        ops.adagrad_update(p, g, state["h"], h["lr"], h["eps"], backend=self.backend)


class RMSprop(Optimizer):
    """As torch.optim.RMSprop: ``h = alpha * h + (1 - alpha) * g * g;
    p -= lr * g / (sqrt(h) + eps)``."""

    STATE = ("h",)
    RULE = ("rmsprop", "alpha", None)

    def __init__(self, lr_or_params=_UNSET, /, lr=_UNSET, alpha=0.99, eps=1e-8, weight_decay=0.0, schedule=None):
        super().__init__(lr_or_params, lr, 0.01, alpha=alpha, eps=eps, weight_decay=weight_decay, schedule=schedule)

    def _update(self, p, g, state):
        h = self.hyperparameters
        ops.rmsprop_update(p, g, state["h"], h["lr"], h["alpha"], h["eps"], backend=self.backend)


class Adadelta(Optimizer):
    """As torch.optim.Adadelta: ``h = rho * h + (1 - rho) * g * g;
    delta = sqrt(d + eps) / sqrt(h + eps) * g; d = rho * d + (1 - rho) * delta**2;
    p -= lr * delta``."""

    STATE = ("h", "d")
    RULE = ("adadelta", "rho", None)

    def __init__(self, lr_or_params=_UNSET, /, lr=_UNSET, rho=0.9, eps=1e-6, weight_decay=0.0, schedule=None):
        super().__init__(lr_or_params, lr, 1.0, rho=rho, eps=eps, weight_decay=weight_decay, schedule=schedule)

    def _update(self, p, g, state):
        h = self.hyperparameters
        ops.adadelta_update(p, g, state["h"], state["d"], h["lr"], h["rho"], h["eps"], backend=self.backend)


class Adam(Optimizer):
    """As torch.optim.Adam: ``m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g;
    p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``, t the step number."""

    STATE = ("m", "v")
    RULE = ("adam", "beta1", "beta2")

    def __init__(self, lr_or_params=_UNSET, /, lr=_UNSET, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 schedule=None):
        betas = tuple(betas)
        if len(betas) != 2:
            raise ValueError(f"{type(self).__name__}: betas must be a pair (beta1, beta2), got {betas!r}")
        super().__init__(lr_or_params, lr, 1e-3, beta1=betas[0], beta2=betas[1], eps=eps,
                         weight_decay=weight_decay, schedule=schedule)

    @property
    def betas(self) -> tuple[float, float]:
        return self.hyperparameters["beta1"], self.hyperparameters["beta2"]

    def _update(self, p, g, state):
        h = self.hyperparameters
        ops.adam_update(p, g, state["m"], state["v"], self.t, h["lr"], h["beta1"], h["beta2"], h["eps"],
                        backend=self.backend)


class AdamW(Adam):
    """As torch.optim.AdamW (Adam with decoupled weight decay): first
    ``p *= 1 - lr * weight_decay``, then Adam's step on the plain gradient,
    ``m = b1 * m + (1 - b1) * g; v = b2 * v + (1 - b2) * g * g;
    p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``. Unlike the L2 weight
    decay of the other optimizers, the decay never enters m and v, and the gradient arrays
    are left as backward wrote them."""

    L2_WEIGHT_DECAY = False
    RULE = ("adamw", "beta1", "beta2")

    def __init__(self, lr_or_params=_UNSET, /, lr=_UNSET, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 schedule=None):
        super().__init__(lr_or_params, lr, betas=betas, eps=eps, weight_decay=weight_decay, schedule=schedule)

    def _update(self, p, g, state):
        h = self.hyperparameters
        decay = h["weight_decay"] if self.DECAY_BIASES or len(p.shape) > 1 else 0.0
        ops.adamw_update(p, g, state["m"], state["v"], self.t, h["lr"], h["beta1"], h["beta2"], h["eps"],
                         decay, backend=self.backend)


OPTIMIZERS = {"sgd": SGD, "adagrad": Adagrad, "rmsprop": RMSprop, "adadelta": Adadelta, "adam": Adam,
              "adamw": AdamW}


def get(name: str, **hyperparameters) -> Optimizer:
    """An optimizer by name ("sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamw"), with
    the given hyperparameters and the defaults for the rest."""
    key = name.lower() if isinstance(name, str) else name
    if key not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")
    return OPTIMIZERS[key](**hyperparameters)


# ---------------------------------------------------------------------------------------
# Learning-rate schedules
# ---------------------------------------------------------------------------------------

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
        self.optimizer: Optimizer | None = None
        self.base_lr: float | None = None
        self.last_epoch = 0
        self._last_lr: float | None = None

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._arguments().items())
        return f"{type(self).__name__}({args}{', ' if args else ''}interval={self.interval!r})"

    def _arguments(self) -> dict:
        return {}

    # -- driving an optimizer -----------------------------------------------------------

    def attach(self, optimizer: Optimizer) -> None:
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

    def attach(self, optimizer: Optimizer) -> None:
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
