"""The fused training engine: one compiled call per training step.

For a model on the "cython" or the "numba" backend made of Linear layers, each followed
by an elementwise activation (or none), trained by any nnkern optimizer with a loss the
engines have a head for (:meth:`nnkern.losses.Loss.fused_head`,
:data:`nnkern.backends.OUTPUT_HEADS`: cross entropy on integer labels; on float targets of
shape (rows, outputs) ``MSELoss``, ``BCELoss`` after a last Sigmoid layer, and
scikit-learn's logistic / binary log loss and identity / squared error outputs),
:func:`fused_train_step` returns a step function that runs forward, loss, backward and the
update of every parameter in one GIL-free call
(kernels/cython/_cy_train.pyx, backends/numba_train.py) into preallocated buffers.
``fit`` uses it automatically (for a Sequential, or a Graph that is a chain) and falls
back to the layer-by-layer path for anything else: :func:`nnkern.training.select_step`
chooses, and says why a faster engine was not used (``fit(verbose=True)`` prints it).
The engines take the optimizer's rule, hyperparameters, state and step count through its
public methods (:meth:`nnkern.optim.Optimizer.update_rule`, ``state_of``, ``count_steps``,
``upcoming_rates``). The parameters, losses and optimizer states are those of the layer-by-layer
path (same kernels), to round-off. One difference: with weight decay, the layer path (and
the numba step) add ``weight_decay * W`` into the gradient arrays before the update, while
the Cython step folds it into the update and leaves the gradient arrays holding the loss's
gradient alone. (AdamW's decoupled decay scales the parameters in every path and never
touches the gradients.) The step reads the optimizer's learning rate at every call, so a
schedule (:mod:`nnkern.optim`) that changes it between steps or epochs takes effect. On the
CPU backends the last Linear must not be followed by an activation (its output z is the
loss head's input), except the Sigmoid that ``BCELoss`` reads, which the head applies.

On the "cuda" backend (cross entropy on integer labels only: other losses train layer by
layer there) the step trains on the device (backends/cuda_train.py): the whole data set,
the parameters and the optimizer state live there, and besides ``step(xb, yb,
row_weights=None)`` the step has ``step.run_epoch(loader)``, which ``fit`` calls to train a
whole epoch in the DataLoader's order (and with its sample weights) with one kernel launch
and one read-back of the epoch's losses. The learning rate of each step of the epoch is
the optimizer's schedule's (for one stepped per batch, the rates it will set step by
step); other changes to the hyperparameters made during an epoch (by a callback) take
effect from the next epoch. Any activation after the last Linear is backpropagated
through there.

Sparse input: when at most ``SPARSE_INPUT_MAX_DENSITY`` of the training data is nonzero
(MNIST's pixels: 19%), the fused step's first layer runs its two products with the input,
the forward and the weight gradient, over the nonzeros only (the same sums without their
zero terms; once a weight or gradient is infinite or NaN, the dense products' 0 * inf = NaN
terms are among those left out). The environment variable ``NNKERN_SPARSE_INPUT`` overrides the choice: "0"
never, "1" always, "auto" (the default) from the data's density.

Threads: a CPU step takes its thread count from a plan for the machine (:mod:`nnkern._plan`),
cached on disk per CPU model, backend, network (with its loss head), batch, dtype, first
layer and share, made by ``nnkern tune`` or by a fit under ``NNKERN_PLAN=auto`` (which times
1 thread, its share of the budget and, from a share of 4, half of it on its first steps and
keeps the fewest threads within 5% of the fastest). By default (``NNKERN_PLAN=cached``) a
step without a stored plan, and every step under ``NNKERN_PLAN=off``, uses the fixed rule
(one thread below ``nnkern._threads.SPLIT_MIN_MACS`` multiply-adds in the largest product,
else the share); ``NNKERN_PLAN=<n>``: n threads. A step never uses more than its share of
the budget.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from . import _validate
from ._plan import ThreadPlanner
from .backends import ACTIVATION_CODES, ACTIVATIONS, OUTPUT_HEAD_CODES
from .layers import ActivationLayer, Identity, Linear

__all__ = ["fused_train_step", "build_fused_step", "FusedStepUnavailable", "SPARSE_INPUT_MAX_DENSITY"]

# The fused step's first layer reads only the input's nonzeros when at most this fraction
# of the training data is nonzero (benchmarks/sparse_input.py measures where that pays).
SPARSE_INPUT_MAX_DENSITY = 0.25

# Backend -> the module of its fused step: for the CPU engines a FusedMLPStep class with one
# constructor and step() for both (kernels/cython/_cy_train.pyx, backends/numba_train.py);
# the "cuda" engine trains whole epochs on the device (backends/cuda_train.py, _cuda_step).
_ENGINES = {"cython": ".backends._cy_train", "numba": ".backends.numba_train", "cuda": ".backends.cuda_train"}


class FusedStepUnavailable(Exception):
    """Why a model, loss, optimizer or data set cannot train on a fused engine (the
    message says why; the layer-by-layer path trains it instead)."""


def _layer_pairs(model):
    """[(linear, activation layer or None)] of a plain MLP (a chain: one input, one
    output, each layer reading the one before, Linear layers each followed by at most
    one activation)."""
    if not model.is_chain:
        raise FusedStepUnavailable("the model is not a chain of layers (a graph with merges or several inputs or outputs)")
    pairs, i, layers = [], 0, model.layers
    while i < len(layers):
        linear = layers[i]
        if not isinstance(linear, Linear):
            raise FusedStepUnavailable(f"layer {i} {linear!r} is not a Linear layer or an activation after one")
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(following, (ActivationLayer, Identity)):
            pairs.append((linear, following))
            i += 2
        else:
            pairs.append((linear, None))
            i += 1
    return pairs


def _activation_spec(layer):
    """(activation code, slope, keep the pre-activation for the gradient)."""
    if layer is None or isinstance(layer, Identity):
        return ACTIVATION_CODES["identity"], 0.0, False
    params = layer.op_params()
    name = layer.op_name
    if name == "gelu" and params.get("approximate") == "tanh":
        name = "gelu_tanh"
    return ACTIVATION_CODES[name], float(params.get("negative_slope", 0.0)), not layer.grad_from_output


def _network_name(pairs, head: str) -> str:
    """The network as its plan is keyed: the input width, then each layer's width and
    activation, then a loss head other than softmax cross entropy ("784-256relu-10",
    "13-100relu-1 identity_squared")."""
    names = [str(pairs[0][0].in_features)]
    for linear, act_layer in pairs:
        code = _activation_spec(act_layer)[0]
        names.append(f"{linear.out_features}{'' if code == ACTIVATION_CODES['identity'] else ACTIVATIONS[code]}")
    return "-".join(names) + ("" if head == "softmax_cross_entropy" else f" {head}")


def _loss_head(loss, pairs):
    """The loss's head (:class:`nnkern.losses.FusedHead`) on this network, whose last layer
    must suit it: no activation after the last Linear, or the Sigmoid of BCELoss."""
    outputs = pairs[-1][0].out_features
    head = loss.fused_head(outputs)
    if head is None:
        raise FusedStepUnavailable(f"the fused engines have no loss head for {loss!r} (they train cross entropy, "
                                   "squared error and binary log losses; scikit-learn's exp / poisson output "
                                   "trains layer by layer)")
    last = pairs[-1][1]
    last_code = _activation_spec(last)[0]
    if head.name == "sigmoid_bce" and last_code != ACTIVATION_CODES["sigmoid"]:
        raise FusedStepUnavailable(f"BCELoss trains on the fused engines after a last Sigmoid layer, "
                                   f"and this model has {last!r} after its last Linear")
    if head.name != "sigmoid_bce" and last_code != ACTIVATION_CODES["identity"]:
        raise FusedStepUnavailable(f"the CPU engines take the last Linear's output as the input of {loss!r}, "
                                   f"and this model has {last!r} after it")
    return head


def _check_float_targets(y, rows: int, outputs: int):
    """The float heads' targets, the whole data set: real numbers of shape (rows, outputs)
    ((rows,) for one output), finite; FusedStepUnavailable says what is wrong."""
    if y.dtype.kind not in "fiub":
        raise FusedStepUnavailable(f"the targets are of dtype {y.dtype}, not real numbers "
                                   "(the layer path reports them)")
    if y.shape != (rows, outputs) and not (y.shape == (rows,) and outputs == 1):
        raise FusedStepUnavailable(f"the targets of shape {y.shape} do not fit {rows} rows of {outputs} outputs "
                                   "(the layer path reports them)")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        row = int(np.argwhere(~np.isfinite(y))[0][0])
        raise FusedStepUnavailable(f"the targets are not all finite (row {row} holds {y[row]})")


def _batch_targets(yb, dtype, rows: int, outputs: int):
    """A batch's float targets as the engines read them: (rows, outputs) C-contiguous of
    the model's dtype."""
    yb = np.ascontiguousarray(yb, dtype=dtype)
    if yb.shape == (rows,) and outputs == 1:
        yb = yb.reshape(rows, 1)
    if yb.shape != (rows, outputs):
        raise ValueError(f"fused step: targets of shape {yb.shape} for a batch of {rows} rows and {outputs} outputs")
    return yb


def _sparse_input(x) -> bool:
    """Whether the first layer should read only the nonzeros of the data x."""
    setting = os.environ.get("NNKERN_SPARSE_INPUT", "auto").strip().lower()
    _validate.choice("", "NNKERN_SPARSE_INPUT", setting, ("auto", "0", "1"))
    if setting != "auto":
        return setting == "1"
    return np.count_nonzero(x) <= SPARSE_INPUT_MAX_DENSITY * x.size


def fused_train_step(model, optimizer, loss, x, y, batch_size: int):
    """A function ``step(xb, yb, row_weights=None) -> (loss, correct)`` running whole
    training steps of ``model`` in one compiled call (``row_weights``: float64, each row's
    share of a weighted mean loss, summing to 1; for a loss summed over the rows, where
    ``step.sums_rows``, each row's sample weight), or None when this model, loss, optimizer
    or data needs the layer-by-layer path (:func:`build_fused_step` says why). ``correct``:
    the right predictions (None for a loss that does not classify, as
    :meth:`nnkern.losses.Objective.correct`). The whole data set (x, y) is checked here once
    (x of the model's input width; y integer labels in range, or finite float targets of
    the model's outputs), so the compiled step can trust every batch of it.

    ``step.plan`` is its :class:`nnkern._plan.ThreadPlanner` (the thread count in use:
    ``step.plan.describe()``). On the "cython" backend the function also has
    ``step.profiled(xb, yb) -> (loss, correct, seconds per phase)`` and
    ``step.phase_names()``: the same step, timing each of its phases (what ``nnkern bench
    --profile`` reports for the fused engine)."""
    try:
        return build_fused_step(model, optimizer, loss, x, y, batch_size)
    except FusedStepUnavailable:
        return None


def build_fused_step(model, optimizer, loss, x, y, batch_size: int):
    """As :func:`fused_train_step`, but raising :class:`FusedStepUnavailable` with the
    reason where no fused engine applies."""
    if model.backend not in _ENGINES:
        raise FusedStepUnavailable(f"the {model.backend!r} backend has no fused training engine")
    pairs = _layer_pairs(model)
    if model.backend == "cuda":  # cross entropy alone; other losses train layer by layer there
        head = loss.fused_head(pairs[-1][0].out_features)
        if head is None or head.name != "softmax_cross_entropy":
            raise FusedStepUnavailable(f"the cuda engine trains cross entropy on integer labels, not {loss!r}")
    else:
        head = _loss_head(loss, pairs)
    rule = optimizer.update_rule()
    if rule is None:
        raise FusedStepUnavailable(f"{type(optimizer).__name__} has no update rule of the fused engines")
    if optimizer.backend != model.backend:
        raise FusedStepUnavailable(f"the optimizer is bound on {optimizer.backend!r}, the model on {model.backend!r}")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != pairs[0][0].in_features or len(x) != len(y):
        raise FusedStepUnavailable("the data does not fit the first layer (the layer path reports it)")
    outputs = pairs[-1][0].out_features
    labels = head.name == "softmax_cross_entropy"
    if not labels:
        _check_float_targets(y, len(x), outputs)
    elif y.ndim != 1 or y.dtype.kind not in "iu" or y.size == 0 or y.min() < 0 or y.max() >= outputs:
        # the layer-by-layer path validates and reports such targets
        raise FusedStepUnavailable("the targets are not integer class labels in range (one-hot rows train on the layer path)")
    dtype = model.dtype
    rows = int(batch_size)
    try:
        states = {id(p): optimizer.state_of(p) for p in model.parameters()}
    except ValueError as exc:
        raise FusedStepUnavailable(str(exc)) from None
    if model.backend == "cuda":
        return _cuda_step(pairs, states, optimizer, dtype, rows, x, y)
    engine = importlib.import_module(_ENGINES[model.backend], __package__)
    layers = []
    for linear, act_layer in pairs:
        # the last layer's output is z, whatever the head makes of it (BCELoss's Sigmoid)
        code, slope, keep_preact = _activation_spec(None if linear is pairs[-1][0] else act_layer)
        h = np.empty((rows, linear.out_features), dtype)
        z = np.empty_like(h) if keep_preact else None
        layers.append((linear.W, linear.b, linear.dW, linear.db, code, slope, keep_preact, h, z,
                       states[id(linear.W)], states[id(linear.b)]))
    widest = max(max(linear.in_features, linear.out_features) for linear, _ in pairs)
    delta0, delta1 = np.empty(rows * widest, dtype), np.empty(rows * widest, dtype)
    sparse = _sparse_input(x)
    fused = engine.FusedMLPStep(layers, delta0, delta1, rule.code, dtype == np.float64, rows,
                                sparse_input=sparse, head=OUTPUT_HEAD_CODES[head.name], grad_scale=head.grad_scale,
                                loss_scale=head.loss_scale, sums_rows=head.sums_rows)
    # the step's threads: its plan for this machine (nnkern._plan), timed on its first steps
    planner = ThreadPlanner(model.backend, _network_name(pairs, head.name), rows, np.dtype(dtype).name, sparse,
                            model.largest_product(rows))
    counts = loss.classification  # else the step's right predictions are None, as Objective.correct's

    def run(method, xb, yb, row_weights):
        xb = np.ascontiguousarray(xb, dtype=dtype)
        yb = np.ascontiguousarray(yb, dtype=np.int64) if labels else _batch_targets(yb, dtype, len(xb), outputs)
        now = optimizer.update_rule()  # the hyperparameters as they are now (a schedule changes lr)
        value, correct, *phases = planner.run(lambda threads: method(
            xb, yb, now.lr, now.a, now.b, now.eps, now.weight_decay, optimizer.count_steps(1), threads, row_weights,
            now.bias_weight_decay))
        return (value, correct if counts else None, *phases)

    def step(xb, yb, row_weights=None):
        return run(fused.step, xb, yb, row_weights)

    if hasattr(fused, "epoch"):
        def epochs(x, targets):
            """``run(order, batch_size, eps, weight_decay, weight_squares=False)``: a pass over
            the rows ``order`` of (x, targets) in batches of ``batch_size``, in one compiled
            call with the GIL released (nnkern.sklearn's epochs; ~20% of a small network's
            step was the Python between steps). x: C-contiguous float32 or float64, read in
            place; ``eps``, ``weight_decay``: one per batch; the rate and the rule's other
            hyperparameters are the optimizer's now. ``run`` returns per batch (loss, right
            predictions or None, the sum of the squared weight matrices before its step or
            0) and counts the steps; or None, training nothing, where the step's plan is
            still being timed (NNKERN_PLAN=auto) or the optimizer's schedule changes the rate
            within the epoch. The targets are checked once, here."""
            if labels:
                targets = np.ascontiguousarray(targets, dtype=np.int64)
                if len(targets) and not 0 <= targets.min() <= targets.max() < outputs:
                    raise ValueError(f"fused epoch: labels {targets.min()}..{targets.max()} for {outputs} classes")
            else:
                targets = _batch_targets(targets, dtype, len(x), outputs)

            def run(order, batch_size: int, eps, weight_decay, weight_squares: bool = False):
                if planner.setting == "auto" or (optimizer.schedule is not None
                                                 and optimizer.schedule.interval == "step"):
                    return None
                now = optimizer.update_rule()
                losses, correct, squares = planner.run(lambda threads: fused.epoch(
                    x, targets, order, batch_size, now.lr, now.a, now.b, eps, weight_decay, optimizer.t, threads,
                    decay_biases=optimizer.DECAY_BIASES, weight_squares=weight_squares))
                optimizer.count_steps(len(losses))
                return losses, correct if counts else None, squares

            return run

        step.epochs = epochs
    step.logits = layers[-1][7]  # the last batch's z, the head's input (first rows of this buffer)
    step.sums_rows = head.sums_rows
    step.sparse_input = sparse
    step.plan = planner
    # Numba compiles the step on its first call in a process unless its disk cache has it;
    # a first compilation takes 10-30 s (BENCHMARKS.md), which fit(verbose=True) says beforehand.
    compiled = getattr(fused, "is_compiled", None)  # numba: whether this rule's step for these targets is
    step.first_call_note = (
        "numba: compiling the training step, or loading it from Numba's cache (a first "
        "compilation takes 10-30 s, once)" if compiled is not None and not compiled() else None)
    if hasattr(fused, "step_profiled"):  # the Cython step times its phases on request
        step.profiled = lambda xb, yb, row_weights=None: run(fused.step_profiled, xb, yb, row_weights)
        step.phase_names = fused.phase_names
    return step


def _weighted_batches(sample_weight, order, batch_size: int):
    """(the epoch's ``order`` without its batches of zero total weight, each row's share of
    its batch's weight, each remaining batch's total weight): a batch of zero weight takes
    no step, as on the other engines."""
    weights = sample_weight[order]
    starts = np.arange(0, len(order), batch_size)
    totals = np.add.reduceat(weights, starts) if len(order) else np.zeros(0)
    row_totals = np.repeat(totals, np.diff(np.append(starts, len(order))))
    kept = row_totals > 0
    return order[kept], weights[kept] / row_totals[kept], totals[totals > 0]


def _cuda_step(pairs, states, optimizer, dtype, rows, x, y):
    """The "cuda" engine's step: ``step(xb, yb, row_weights=None)`` trains one host batch
    (as the CPU engines' steps do), and ``step.run_epoch(loader, stop_on_nonfinite=True)``
    trains a whole epoch of the DataLoader over (x, y) on the device, in the loader's order
    and with its sample weights, returning ``[(mean loss, right predictions, rows,
    weight)]`` per step (``weight``: the batch's total sample weight, its rows when
    unweighted; a batch of zero weight takes no step and is left out), read back once. The
    epoch's learning rates are those of the optimizer's schedule, step by step, as ``fit``
    steps the schedule after every batch (which it does, for the epoch, after the epoch)."""
    from .backends import cuda_train

    rule = optimizer.update_rule()
    if rule.code not in cuda_train.RULES:
        raise FusedStepUnavailable(f"the cuda engine has no {rule.name!r} rule")
    if not cuda_train.data_fits(x.size * np.dtype(dtype).itemsize):
        raise FusedStepUnavailable("the training set takes more than half the free device memory")
    layers = [(linear.W, linear.b, linear.dW, linear.db, *_activation_spec(act_layer),
               states[id(linear.W)], states[id(linear.b)])
              for linear, act_layer in pairs]
    trainer = cuda_train.FusedCudaTrainer(layers, rule.code, dtype, rows, x, y)

    def run(steps, **where):
        now = optimizer.update_rule()
        trainer.load_model()
        losses, correct, batch_rows = trainer.run(
            hyper={"a": now.a, "b": now.b, "eps": now.eps, "weight_decay": now.weight_decay,
                   "bias_weight_decay": now.bias_weight_decay},
            rates=optimizer.upcoming_rates(steps), t0=optimizer.count_steps(0), **where)
        trainer.store_model()
        optimizer.count_steps(len(losses))
        return losses, correct, batch_rows

    def step(xb, yb, row_weights=None):
        losses, correct, _ = run(1, order=None, batch=(xb, yb), shares=row_weights, stop_on_nonfinite=False)
        return float(losses[0]), int(correct[0])

    def run_epoch(loader, *, stop_on_nonfinite=True):
        if loader.batch_size != rows or loader.samples != trainer.n_samples:
            raise ValueError(f"run_epoch: the loader has {loader.samples} samples in batches of {loader.batch_size}; "
                             f"this step was made for {trainer.n_samples} in batches of {rows}")
        order = loader.epoch_order()
        order = (np.arange(loader.samples) if order is None else order)[:len(loader) * rows]
        shares = None
        if loader.sample_weight is not None:
            order, shares, totals = _weighted_batches(loader.sample_weight, order, rows)
        losses, correct, batch_rows = run(-(-len(order) // rows), order=order, shares=shares,
                                          stop_on_nonfinite=stop_on_nonfinite)
        weights = batch_rows if shares is None else totals
        return [(float(v), int(c), int(r), float(w)) for v, c, r, w in zip(losses, correct, batch_rows, weights)]

    step.run_epoch = run_epoch
    step.sums_rows = False
    step.trainer = trainer
    step.first_call_note = trainer.first_call_note()
    return step
