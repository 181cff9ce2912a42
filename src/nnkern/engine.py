"""The fused training engine: one compiled call per training step.

For a model on the "cython" or the "numba" backend made of Linear layers, each followed
by an elementwise activation (or none), trained with cross entropy on integer labels by
any nnkern optimizer, :func:`fused_train_step` returns a step function that runs forward,
loss, backward and the update of every parameter in one GIL-free call
(kernels/cython/_cy_train.pyx, backends/numba_train.py) into preallocated buffers.
``fit`` uses it automatically (for a Sequential, or a Graph that is a chain) and falls
back to the layer-by-layer path for anything else. The parameters, losses and optimizer states are those of the layer-by-layer
path (same kernels), to round-off. One difference: with weight decay, the layer path (and
the numba step) add ``weight_decay * W`` into the gradient arrays before the update, while
the Cython step folds it into the update and leaves the gradient arrays holding the loss's
gradient alone. (AdamW's decoupled decay scales the parameters in every path and never
touches the gradients.) The step reads the optimizer's learning rate at every call, so a
schedule (:mod:`nnkern.optim`) that changes it between steps or epochs takes effect. On the
CPU backends the last Linear must not be followed by an activation (its output is the
logits).

On the "cuda" backend the step trains on the device (backends/cuda_train.py): the whole
data set, the parameters and the optimizer state live there, and besides ``step(xb, yb)``
the step has ``step.run_epoch(loader)``, which ``fit`` calls to train a whole epoch in the
DataLoader's order with one kernel launch and one read-back of the epoch's losses. The
learning rate of each step of the epoch is the optimizer's schedule's (for one stepped per
batch, the rates it will set step by step); other changes to the hyperparameters made
during an epoch (by a callback) take effect from the next epoch. Any activation after the
last Linear is backpropagated through there.

Sparse input: when at most ``SPARSE_INPUT_MAX_DENSITY`` of the training data is nonzero
(MNIST's pixels: 19%), the fused step's first layer runs its two products with the input,
the forward and the weight gradient, over the nonzeros only (the same sums without their
zero terms; once a weight or gradient is infinite or NaN, the dense products' 0 * inf = NaN
terms are among those left out). The environment variable ``NNKERN_SPARSE_INPUT`` overrides the choice: "0"
never, "1" always, "auto" (the default) from the data's density.
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from ._threads import claim
from .backends import ACTIVATION_CODES

__all__ = ["fused_train_step", "SPARSE_INPUT_MAX_DENSITY"]

# The fused step's first layer reads only the input's nonzeros when at most this fraction
# of the training data is nonzero (benchmarks/sparse_input.py measures where that pays).
SPARSE_INPUT_MAX_DENSITY = 0.25

# Backend -> the module of its fused step: for the CPU engines a FusedMLPStep class with one
# constructor and step() for both (kernels/cython/_cy_train.pyx, backends/numba_train.py);
# the "cuda" engine trains whole epochs on the device (backends/cuda_train.py, _cuda_step).
_ENGINES = {"cython": ".backends._cy_train", "numba": ".backends.numba_train", "cuda": ".backends.cuda_train"}

# Optimizer class name -> (rule code of kernels/cython/nnk_update.h, the same in the numba
# step; hyperparameters passed as a, b)
_RULES = {
    "SGD": (0, ("momentum", None)),
    "SGD+momentum": (1, ("momentum", None)),
    "Adagrad": (2, (None, None)),
    "RMSprop": (3, ("alpha", None)),
    "Adadelta": (4, ("rho", None)),
    "Adam": (5, ("beta1", "beta2")),
    "AdamW": (6, ("beta1", "beta2")),
}


def _layer_pairs(model):
    """[(linear, activation layer or None)], or None when the model is not a plain MLP
    (a chain: one input, one output, each layer reading the one before)."""
    from . import nn

    if not model.is_chain:
        return None
    pairs, i, layers = [], 0, model.layers
    while i < len(layers):
        linear = layers[i]
        if not isinstance(linear, nn.Linear):
            return None
        following = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(following, (nn._Activation, nn.Identity)):
            pairs.append((linear, following))
            i += 2
        else:
            pairs.append((linear, None))
            i += 1
    return pairs


def _activation_spec(layer):
    """(activation code, slope, keep the pre-activation for the gradient)."""
    from . import nn

    if layer is None or isinstance(layer, nn.Identity):
        return ACTIVATION_CODES["identity"], 0.0, False
    params = layer.op_params()
    name = layer.op_name
    if name == "gelu" and params.get("approximate") == "tanh":
        name = "gelu_tanh"
    return ACTIVATION_CODES[name], float(params.get("negative_slope", 0.0)), not layer.grad_from_output


def _sparse_input(x) -> bool:
    """Whether the first layer should read only the nonzeros of the data x."""
    setting = os.environ.get("NNKERN_SPARSE_INPUT", "auto").strip().lower()
    if setting not in ("auto", "0", "1"):
        raise ValueError(f"NNKERN_SPARSE_INPUT must be 'auto', '0' or '1', got {setting!r}")
    if setting != "auto":
        return setting == "1"
    return np.count_nonzero(x) <= SPARSE_INPUT_MAX_DENSITY * x.size


def _rule(optimizer):
    name = type(optimizer).__name__
    if name == "SGD" and optimizer.hyperparameters["momentum"]:
        name = "SGD+momentum"
    return _RULES.get(name)


def fused_train_step(model, optimizer, loss, x, y, batch_size: int):
    """A function ``step(xb, yb) -> (loss, correct)`` running whole training steps of
    ``model`` in one compiled call, or None when this model, loss, optimizer or data
    needs the layer-by-layer path. The whole data set (x, y) is checked here once (x of
    the model's input width, y integer labels in range), so the compiled step can trust
    every batch of it.

    On the "cython" backend the function also has ``step.profiled(xb, yb) -> (loss,
    correct, seconds per phase)`` and ``step.phase_names()``: the same step, timing each
    of its phases (what ``nnkern bench --profile`` reports for the fused engine)."""
    from . import nn

    if model.backend not in _ENGINES or not isinstance(loss, nn.CrossEntropyLoss):
        return None
    pairs = _layer_pairs(model)
    rule = _rule(optimizer)
    if pairs is None or rule is None or optimizer.backend != model.backend:
        return None
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 2 or x.shape[1] != pairs[0][0].in_features or len(x) != len(y):
        return None
    n_classes = pairs[-1][0].out_features
    if y.ndim != 1 or y.dtype.kind not in "iu" or y.size == 0 or y.min() < 0 or y.max() >= n_classes:
        return None  # the layer-by-layer path validates and reports such targets
    dtype = model.dtype
    rows = int(batch_size)
    params = model.parameters()
    state_of = {id(p): s for p, s in zip(optimizer.params, optimizer.state)}
    if any(id(p) not in state_of for p in params):
        return None
    if model.backend == "cuda":
        return _cuda_step(pairs, state_of, optimizer, rule, dtype, rows, x, y)
    if _activation_spec(pairs[-1][1])[0] != ACTIVATION_CODES["identity"]:
        return None  # the CPU steps take the last layer's output as the logits, with no activation
    engine = importlib.import_module(_ENGINES[model.backend], __package__)
    layers = []
    for linear, act_layer in pairs:
        code, slope, keep_preact = _activation_spec(act_layer)
        h = np.empty((rows, linear.out_features), dtype)
        z = np.empty_like(h) if keep_preact else None
        states = [tuple(state_of[id(p)].values()) for p in (linear.W, linear.b)]
        layers.append((linear.W, linear.b, linear.dW, linear.db, code, slope, keep_preact, h, z, *states))
    widest = max(max(linear.in_features, linear.out_features) for linear, _ in pairs)
    delta0, delta1 = np.empty(rows * widest, dtype), np.empty(rows * widest, dtype)
    sparse = _sparse_input(x)
    fused = engine.FusedMLPStep(layers, delta0, delta1, rule[0], dtype == np.float64, rows,
                                sparse_input=sparse)
    a_name, b_name = rule[1]
    hyper = optimizer.hyperparameters
    # the step's threads follow from its largest product (small ones run on one thread)
    work = rows * max(linear.in_features * linear.out_features for linear, _ in pairs)

    def run(method, xb, yb):
        xb = np.ascontiguousarray(xb, dtype=dtype)
        yb = np.ascontiguousarray(yb, dtype=np.int64)
        optimizer.t += 1
        with claim(work) as threads:
            return method(xb, yb, hyper["lr"], hyper[a_name] if a_name else 0.0,
                          hyper[b_name] if b_name else 0.0, hyper.get("eps", 0.0),
                          hyper.get("weight_decay", 0.0), optimizer.t, threads)

    def step(xb, yb):
        return run(fused.step, xb, yb)

    step.logits = layers[-1][7]  # the last batch's logits (first rows of this buffer)
    step.sparse_input = sparse
    # Numba compiles the step on its first call in a process unless its disk cache has it;
    # a first compilation takes most of a minute, which fit(verbose=True) says beforehand.
    compiled = getattr(engine, "train_step", None)
    step.first_call_note = (
        "numba: compiling the training step, or loading it from Numba's cache (a first "
        "compilation takes about a minute, once)" if compiled is not None and not compiled.signatures else None)
    if hasattr(fused, "step_profiled"):  # the Cython step times its phases on request
        step.profiled = lambda xb, yb: run(fused.step_profiled, xb, yb)
        step.phase_names = fused.phase_names
    return step


def _hyperparameters(optimizer, names) -> dict:
    """The optimizer's current hyperparameters other than the learning rate, as the cuda
    step takes them."""
    a_name, b_name = names
    hyper = optimizer.hyperparameters
    return {"a": hyper[a_name] if a_name else 0.0, "b": hyper[b_name] if b_name else 0.0,
            "eps": hyper.get("eps", 0.0), "weight_decay": hyper.get("weight_decay", 0.0)}


def _step_rates(optimizer, steps: int) -> list[float]:
    """The learning rate of each of the optimizer's next ``steps`` steps: its rate now, and
    where its schedule steps after every batch (as fit steps it), the rates the schedule
    will set."""
    lr = optimizer.hyperparameters["lr"]
    schedule = optimizer.schedule
    if schedule is None or schedule.interval != "step":
        return [lr] * steps
    return [lr] + [schedule.lr_at(schedule.last_epoch + k) for k in range(1, steps)]


def _cuda_step(pairs, state_of, optimizer, rule, dtype, rows, x, y):
    """The "cuda" engine's step: ``step(xb, yb)`` trains one host batch (as the CPU
    engines' steps do), and ``step.run_epoch(loader, stop_on_nonfinite=True)`` trains a
    whole epoch of the DataLoader over (x, y) on the device, in the loader's order,
    returning ``[(mean loss, right predictions, rows)]`` per step, read back once. The
    epoch's learning rates are those of the optimizer's schedule, step by step, as ``fit``
    steps the schedule after every batch (which it does, for the epoch, after the epoch)."""
    from .backends import cuda_train

    if rule[0] not in cuda_train.RULES or not cuda_train.data_fits(x.size * np.dtype(dtype).itemsize):
        return None
    layers = [(linear.W, linear.b, linear.dW, linear.db, *_activation_spec(act_layer),
               tuple(state_of[id(linear.W)].values()), tuple(state_of[id(linear.b)].values()))
              for linear, act_layer in pairs]
    trainer = cuda_train.FusedCudaTrainer(layers, rule[0], dtype, rows, x, y)

    def run(steps, **where):
        trainer.load_model()
        losses, correct, batch_rows = trainer.run(hyper=_hyperparameters(optimizer, rule[1]),
                                                  rates=_step_rates(optimizer, steps), t0=optimizer.t, **where)
        trainer.store_model()
        optimizer.t += len(losses)
        return losses, correct, batch_rows

    def step(xb, yb):
        losses, correct, _ = run(1, order=None, batch=(xb, yb), stop_on_nonfinite=False)
        return float(losses[0]), int(correct[0])

    def run_epoch(loader, *, stop_on_nonfinite=True):
        if loader.batch_size != rows or loader.samples != trainer.n_samples:
            raise ValueError(f"run_epoch: the loader has {loader.samples} samples in batches of {loader.batch_size}; "
                             f"this step was made for {trainer.n_samples} in batches of {rows}")
        order = loader.epoch_order()
        order = np.arange(loader.samples) if order is None else order
        losses, correct, batch_rows = run(len(loader), order=order[:len(loader) * rows],
                                          stop_on_nonfinite=stop_on_nonfinite)
        return [(float(v), int(c), int(r)) for v, c, r in zip(losses, correct, batch_rows)]

    step.run_epoch = run_epoch
    step.trainer = trainer
    step.first_call_note = trainer.first_call_note()
    return step
