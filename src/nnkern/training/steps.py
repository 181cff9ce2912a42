"""The training steps: one interface for every engine, and the one place that picks it.

A step object trains a model one batch at a time, ``step(xb, yb, wb=None) -> (loss,
per-output losses, per-output right predictions)`` (``wb``: the batch's sample weights),
and a whole epoch with ``run_epoch(loader)``, which yields ``(rows, loss, per-output
losses, per-output right predictions, weight)`` per batch (``weight``: the batch's total
sample weight, its rows when unweighted). A batch whose sample weights are all zero takes
no step and yields nothing.
The engines:

* :class:`LayerStep`: the layer-by-layer path (the model's forward, the objective, the
  model's backward, ``optimizer.step()``); every model, loss and optimizer.
* :class:`FusedStep`: the fused CPU steps of "cython" and "numba" (:mod:`nnkern.engine`):
  one compiled call per step for plain MLPs trained with a loss the engines have a head
  for (cross entropy on integer labels, squared error, binary log losses).
* :class:`DeviceEpochStep`: the "cuda" engine, whose ``run_epoch`` trains the whole epoch
  on the device and reads its losses back once.

:func:`select_step` chooses the fastest engine that applies and records why a faster one
did not (:attr:`TrainingStep.fallback_reason`); ``fit(verbose=True)`` prints that reason.
"""

from __future__ import annotations

import numpy as np

from .. import engine
from .._clip import clip_grad_norm_
from .._threads import claim

__all__ = ["TrainingStep", "LayerStep", "FusedStep", "DeviceEpochStep", "select_step"]


class TrainingStep:
    """The interface of every engine (see the module's docstring)."""

    engine = ""  # what trains, for messages: "layer by layer", "cython fused step", ...
    first_call_note: str | None = None  # said before a first step that may compile
    fallback_reason: str | None = None  # why a faster engine is not used (None: it is)
    plan = None  # the fused CPU steps' thread plan (nnkern._plan.ThreadPlanner)

    def step(self, xb, yb, wb=None) -> tuple[float, list, list]:
        raise NotImplementedError

    def run_epoch(self, loader, *, stop_on_nonfinite: bool = True):
        """Train one pass over ``loader``'s batches (``(xb, yb)``, or ``(xb, yb, wb)`` with
        sample weights), yielding ``(rows, loss, per-output losses, per-output right
        predictions, weight)`` after each."""
        for batch in loader:
            xb, yb, wb = batch if len(batch) == 3 else (*batch, None)
            rows = len(xb[0] if isinstance(xb, tuple) else xb)
            if wb is None:
                yield (rows, *self.step(xb, yb), rows)
            elif wb.any():
                yield (rows, *self.step(xb, yb, wb), float(wb.sum()))


class LayerStep(TrainingStep):
    """Forward, objective, backward and the optimizer's update, layer by layer; with
    ``max_grad_norm`` the gradients are clipped to that global norm before the update
    (:func:`nnkern.optim.clip_grad_norm_`)."""

    engine = "layer by layer"

    def __init__(self, model, optimizer, objective, fallback_reason: str | None = None, max_grad_norm=None):
        self.model, self.optimizer, self.objective = model, optimizer, objective
        self.fallback_reason = fallback_reason
        self.max_grad_norm = max_grad_norm
        self._several_outputs = len(model.output_names) > 1

    def step(self, xb, yb, wb=None):
        rows = len(xb[0] if isinstance(xb, tuple) else xb)
        # the step's kernels take the threads of its largest product (a small network's: one)
        with claim(self.model.largest_product(rows)):
            value, output = self.model.compute_gradients(xb, yb, self.objective, wb)
            if self.max_grad_norm is not None:
                clip_grad_norm_(self.model, self.max_grad_norm)
            self.optimizer.step()
        outputs, targets = (output, yb) if self._several_outputs else ([output], [yb])
        return value, self.objective.values, self.objective.correct(outputs, targets)


class FusedStep(TrainingStep):
    """A fused CPU engine's step (:func:`nnkern.engine.build_fused_step`); ``function``
    is the engine's own ``step(xb, yb, row_weights=None) -> (loss, right predictions)``
    with its extras (``logits``, ``sums_rows``, ``profiled`` on "cython")."""

    def __init__(self, function, backend: str):
        self.function = function
        self.engine = f"{backend} fused step"
        self.first_call_note = function.first_call_note
        self.plan = getattr(function, "plan", None)
        # the engine's whole-epoch calls, where it has them (nnkern.engine.build_fused_step)
        self.epochs = getattr(function, "epochs", None)

    def step(self, xb, yb, wb=None):
        if wb is None:
            value, correct = self.function(xb, yb)
        else:
            # each row's share of the batch's weight, or for a loss summed over rows its weight
            weights = np.asarray(wb, np.float64)
            value, correct = self.function(xb, yb, row_weights=weights if self.function.sums_rows
                                           else weights / weights.sum())
        return value, [value], [correct]


class DeviceEpochStep(FusedStep):
    """The "cuda" engine: ``run_epoch`` trains the whole epoch on the device, in the
    loader's order and with its sample weights, and yields its batches' results once the
    epoch is done."""

    def __init__(self, function, backend: str):
        super().__init__(function, backend)
        self.engine = f"{backend} device epochs"

    def run_epoch(self, loader, *, stop_on_nonfinite: bool = True):
        for value, correct, rows, weight in self.function.run_epoch(loader, stop_on_nonfinite=stop_on_nonfinite):
            yield rows, value, [value], [correct], weight


def select_step(model, optimizer, objective, xs: list, ys: list, batch_size: int, *,
                fused: bool = True, max_grad_norm=None) -> TrainingStep:
    """The step that trains ``model`` on the data ``xs`` (its input arrays) and ``ys``
    (its target arrays) in batches of ``batch_size``, with sample weights or without:
    the model backend's fused engine where it applies, else :class:`LayerStep`, whose
    ``fallback_reason`` says why. ``max_grad_norm``: clip the gradients to that global
    norm before every update (the layer-by-layer engine does)."""
    if not fused:
        reason = "fused=False"
    elif max_grad_norm is not None:
        reason = "gradient clipping (max_grad_norm) runs layer by layer"
    elif len(xs) != 1 or len(objective.losses) != 1:
        reason = "the model has several inputs or outputs"
    elif objective.weights != [1.0]:
        reason = "the loss is weighted"
    else:
        try:
            function = engine.build_fused_step(model, optimizer, objective.losses[0], xs[0], ys[0], batch_size)
        except engine.FusedStepUnavailable as exc:
            reason = str(exc)
        else:
            kind = DeviceEpochStep if hasattr(function, "run_epoch") else FusedStep
            return kind(function, model.backend)
    return LayerStep(model, optimizer, objective, reason, max_grad_norm)
