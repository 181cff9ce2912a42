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

import dataclasses
import functools
import numbers

import numpy as np

from . import _arrays, _validate, ops
from ._backend import backend_module, get_backend
from ._clip import clip_grad_norm_
from .backends import UPDATE_RULE_CODES
from .schedules import (
    SCHEDULES,
    CosineAnnealingLR,
    ExponentialLR,
    LambdaLR,
    LinearLR,
    LRScheduler,
    MultiStepLR,
    ReduceLROnPlateau,
    SequentialLR,
    StepLR,
)

__all__ = ["Optimizer", "UpdateRule", "clip_grad_norm_", "SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "AdamW",
           "get", "OPTIMIZERS",
           "LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LinearLR", "LambdaLR",
           "SequentialLR", "ReduceLROnPlateau", "SCHEDULES"]

_UNSET = object()


def _hyperparameter(owner: str, name: str, value, *, below_one: bool = False) -> float:
    if below_one:
        return _validate.real(owner, name, value, low=0, high=1, high_open=True, expected="in [0, 1)")
    return _validate.real(owner, name, value, low=0, expected="finite and >= 0")


@functools.cache
def _rule_spec(optimizer_type: type) -> tuple | None:
    """``RULE`` of the class that defines the optimizer's ``_update``: a subclass that
    inherits the update inherits its rule, one that redefines it has none unless it says."""
    owner = next(cls for cls in optimizer_type.__mro__ if "_update" in cls.__dict__)
    return owner.__dict__.get("RULE")


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

    def _rule_eps(self, step: int) -> float:
        """The ``eps`` of the rule the fused engines run at ``step`` (1-based)."""
        return self.hyperparameters.get("eps", 0.0)

    def update_rule(self) -> UpdateRule | None:
        """The rule the fused training engines run for this optimizer, with the
        hyperparameters now in force; None when they have none for it. (Read before
        every fused step: a small network's step lasts tens of microseconds.)"""
        spec = _rule_spec(type(self))
        if spec is None:
            return None
        name, a_name, b_name = spec
        name = self._rule_name(name)
        h = self.hyperparameters
        weight_decay = h.get("weight_decay", 0.0)
        return UpdateRule(name, UPDATE_RULE_CODES[name], h["lr"], h[a_name] if a_name else 0.0,
                          h[b_name] if b_name else 0.0, self._rule_eps(self.t + 1), weight_decay,
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
    ``v = momentum * v + g; p -= lr * v`` (v starts at zero); with ``nesterov=True``
    (momentum > 0 required, as torch) Nesterov's momentum, the same ``v`` and
    ``p -= lr * (g + momentum * v)``. ``nesterov`` is fixed at construction."""

    RULE = ("sgd", "momentum", None)

    def __init__(self, lr_or_params=_UNSET, /, lr=_UNSET, momentum=0.0, weight_decay=0.0, nesterov=False,
                 schedule=None):
        if not isinstance(nesterov, (bool, np.bool_)):
            raise TypeError(f"SGD: nesterov must be True or False, got {nesterov!r}")
        momentum = _hyperparameter("SGD", "momentum", momentum)
        if nesterov and momentum == 0:
            raise ValueError(f"SGD: nesterov=True needs momentum > 0, got momentum={momentum!r}")
        self._nesterov = bool(nesterov)
        self.STATE = ("v",) if momentum else ()  # before a torch-style bind creates the state
        super().__init__(lr_or_params, lr, 0.01, momentum=momentum, weight_decay=weight_decay, schedule=schedule)

    @property
    def nesterov(self) -> bool:
        """Whether the step is Nesterov's, ``p -= lr * (g + momentum * v)``."""
        return self._nesterov

    def _update(self, p, g, state):
        h = self.hyperparameters
        if self._nesterov:
            ops.nesterov_update(p, g, state["v"], h["lr"], h["momentum"], backend=self.backend)
        elif h["momentum"]:
            ops.momentum_update(p, g, state["v"], h["lr"], h["momentum"], backend=self.backend)
        else:
            ops.sgd_update(p, g, h["lr"], backend=self.backend)

    def _rule_name(self, name):
        if self._nesterov:
            return "nesterov"
        return "momentum" if self.hyperparameters["momentum"] else name

    def __repr__(self) -> str:
        text = super().__repr__()
        return f"{text[:-1]}, nesterov=True)" if self._nesterov else text

    def state_dict(self) -> dict:
        return {**super().state_dict(), "nesterov": self._nesterov}

    def load_state_dict(self, state_dict: dict) -> None:
        saved = bool(state_dict.get("nesterov", False))
        if saved != self._nesterov:
            raise ValueError(f"SGD.load_state_dict: the state is of an SGD with nesterov={saved}, "
                             f"this one has nesterov={self._nesterov}")
        super().load_state_dict(state_dict)


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
