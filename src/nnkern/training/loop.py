"""The one training loop: ``fit`` of every model, whatever engine trains it (the step
object :func:`nnkern.training.select_step` picks), with validation, callbacks, the
optimizer's learning-rate schedule and the check for a non-finite loss."""

from __future__ import annotations

import math
import time

import numpy as np

from .. import _arrays, _validate, optim
from ..data import DataLoader
from ..losses import CrossEntropyLoss
from .history import EpochPrinter, History, NonFiniteLossError, PlanPrinter, dispatch
from .steps import select_step

# Only backends with a fused engine say why a model trains layer by layer instead.
_FUSED_BACKENDS = ("cython", "numba", "cuda")


class Meter:
    """Sample-weighted means of an objective's loss, of each output's loss and accuracy
    over the batches of an epoch or an evaluation: the logs of fit and evaluate. One
    output: "loss" and (classification) "accuracy"; several: "loss" (the weighted
    total), "<output>_loss" and "<output>_accuracy"."""

    def __init__(self, objective):
        self.objective = objective
        self.seen, self.weight, self.loss_sum = 0, 0.0, 0.0
        self.loss_sums = [0.0] * len(objective.losses)
        self.correct = [0] * len(objective.losses)

    def add(self, samples: int, value: float, values: list, correct: list, weight: float | None = None) -> None:
        """A batch of ``samples`` rows: its loss, per-output losses and right predictions;
        ``weight`` (default: ``samples``) is the batch's total sample weight, which its
        losses count with (accuracies count rows)."""
        weight = samples if weight is None else weight
        self.loss_sum += value * weight
        self.seen += samples
        self.weight += weight
        for i, (output_value, output_correct) in enumerate(zip(values, correct)):
            self.loss_sums[i] += output_value * weight
            if output_correct is not None:
                self.correct[i] += output_correct

    def logs(self) -> dict:
        def mean(total, count):
            return total / count if count else math.nan

        objective = self.objective
        logs = {"loss": mean(self.loss_sum, self.weight)}
        if len(objective.losses) == 1:
            if objective.classification:
                logs["accuracy"] = mean(self.correct[0], self.seen)
            return logs
        for name, loss, loss_sum, correct in zip(objective.names, objective.losses, self.loss_sums, self.correct):
            logs[f"{name}_loss"] = mean(loss_sum, self.weight)
            if loss.classification:
                logs[f"{name}_accuracy"] = mean(correct, self.seen)
        return logs


def bound_optimizer(model, optimizer):
    """``optimizer`` (an nnkern optimizer or its name) bound to the model's parameters
    (kept as it is when it already is: its state carries on)."""
    if isinstance(optimizer, str):
        optimizer = optim.get(optimizer)
    if not isinstance(optimizer, optim.Optimizer):
        raise TypeError(f"fit: optimizer must be an nnkern.optim optimizer or its name, got {optimizer!r}")
    if not optimizer.is_bound_to(model.parameters()):
        optimizer.bind(model.parameters(), model.gradients(), backend=model.backend)
    return optimizer


def check_data(model, objective, xs: list, ys: list, what: str) -> None:
    """Check the whole data set (``what``: "x" and "y", or "validation_data") before the
    first step, naming a bad row in the data as given (not in a shuffled batch): a NaN or
    infinity in an input, or a class index of a cross-entropy output out of range."""
    several = len(xs) > 1
    for name, x in zip(model.input_names, xs):
        if _arrays.is_device_array(x):
            continue
        x = np.asarray(x)
        if x.dtype.kind in "fc" and not np.isfinite(x).all():
            row, *column = np.argwhere(~np.isfinite(x))[0]
            place = f"row {row}" + (f", column {column[0]}" if column else "")
            where = f"input {name!r} of {what}" if several else ("x" if what == "x and y" else f"x of {what}")
            raise ValueError(f"fit: {where} has {x[(row, *column)]} at {place}; the inputs must be finite numbers")
    for name, loss, y, slot in zip(model.output_names, objective.losses, ys, model._output_slots):
        classes = model.nodes[slot].features
        if not isinstance(loss, CrossEntropyLoss) or classes is None or _arrays.is_device_array(y):
            continue
        y = np.asarray(y)
        if y.ndim != 1 or y.dtype.kind not in "iu" or not y.size:
            continue  # one-hot rows, and labels the loss itself refuses (floats, other types)
        outside = (y < 0) | (y >= classes)
        if outside.any():
            row = int(np.flatnonzero(outside)[0])
            where = f"the targets of output {name!r} in {what}" if len(ys) > 1 else \
                ("y" if what == "x and y" else f"y of {what}")
            raise ValueError(f"fit: label {y[row]} at row {row} of {where} is out of range for "
                             f"{classes} classes (0..{classes - 1})")


def fit(model, x, y, *, epochs: int = 1, batch_size: int = 32, optimizer, loss="cross_entropy",
        shuffle: bool = True, seed=None, validation_data=None, verbose: bool = True,
        on_nonfinite: str = "raise", callbacks=(), fused: bool = True, loss_weights=None,
        sample_weight=None, max_grad_norm=None) -> History:
    """Train ``model`` (a :class:`nnkern.nn.Graph` or Sequential); the arguments are those
    of :meth:`nnkern.nn.Graph.fit`, which calls this."""
    epochs = _validate.integer("fit", "epochs", epochs, minimum=0, expected="an integer >= 0", type_error=ValueError)
    _validate.choice("fit", "on_nonfinite", on_nonfinite, ("raise", "ignore"))
    objective = model._objective(loss, loss_weights)
    optimizer = bound_optimizer(model, optimizer)
    xs, ys = model._input_arrays(x), model._target_arrays(y)
    check_data(model, objective, xs, ys, "x and y")
    if validation_data is not None:
        x_val, y_val = validation_data
        check_data(model, objective, model._input_arrays(x_val), model._target_arrays(y_val), "validation_data")
    loader = DataLoader(xs[0] if len(xs) == 1 else tuple(xs), ys[0] if len(ys) == 1 else tuple(ys),
                        batch_size, shuffle=shuffle, seed=seed, sample_weight=sample_weight)
    if max_grad_norm is not None:
        max_grad_norm = _validate.real("fit", "max_grad_norm", max_grad_norm, low=0)
    step = select_step(model, optimizer, objective, xs, ys, batch_size, fused=fused, max_grad_norm=max_grad_norm)
    if verbose and step.first_call_note:
        print(step.first_call_note, flush=True)
    if verbose and fused and step.fallback_reason and model.backend in _FUSED_BACKENDS:
        print(f"training layer by layer, not on the {model.backend} fused engine: {step.fallback_reason}", flush=True)
    model.loss = objective.losses[0] if len(ys) == 1 else dict(zip(model.output_names, objective.losses))
    model.loss_weights = loss_weights
    callbacks = list(callbacks)
    if optimizer.schedule is not None and optimizer.schedule not in callbacks:
        callbacks.insert(0, optimizer.schedule)  # the optimizer's lr schedule steps with the training
    callbacks += [EpochPrinter(epochs)] if verbose else []
    callbacks += [PlanPrinter(step.plan)] if verbose and step.plan is not None else []
    history = History()
    steps = len(loader)
    model.stop_training = False
    mode = model.training
    model.train()
    try:
        return _epochs(model, step, loader, objective, callbacks, history, epochs, steps, validation_data,
                       on_nonfinite)
    finally:
        model.train(mode)


def _epochs(model, step, loader, objective, callbacks, history, epochs, steps, validation_data, on_nonfinite):
    """fit's epochs, in training mode."""
    dispatch(callbacks, "set_model", model)
    dispatch(callbacks, "on_train_begin", {"epochs": epochs, "steps": steps, "samples": loader.samples,
                                           "validation": validation_data is not None})
    for epoch in range(1, epochs + 1):
        dispatch(callbacks, "on_epoch_begin", epoch, steps)
        started = time.perf_counter()
        meter = Meter(objective)
        batches = step.run_epoch(loader, stop_on_nonfinite=on_nonfinite == "raise")
        for number, (rows, value, values, correct, weight) in enumerate(batches, 1):
            meter.add(rows, value, values, correct, weight)
            if not math.isfinite(value) and on_nonfinite == "raise":
                raise NonFiniteLossError(
                    f"fit: the loss became {value} at epoch {epoch}, step {number} of {steps}; "
                    f"try a smaller learning rate, or pass on_nonfinite='ignore' to go on"
                )
            dispatch(callbacks, "on_batch_end", epoch, number, steps, meter.logs())
        metrics = meter.logs()
        if validation_data is not None:
            x_val, y_val = validation_data
            metrics.update({f"val_{key}": value for key, value in model._evaluate(x_val, y_val, objective).items()})
        history.append(epoch, metrics)
        dispatch(callbacks, "on_epoch_end", epoch, {**metrics, "seconds": time.perf_counter() - started})
        if model.stop_training:
            break
    dispatch(callbacks, "on_train_end", history)
    return history
