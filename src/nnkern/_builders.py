"""The one builder of fully connected networks and of optimizers by name.

``nnkern train`` (:mod:`nnkern.cli`) and ``nnkern bench``'s nnkern contenders
(:mod:`nnkern.bench`) build their models and optimizers here, and the scikit-learn estimators
(:mod:`nnkern.sklearn`) their networks, so that a network named the same way is the same
object whichever front end asked for it.
"""

from __future__ import annotations

import numpy as np

from . import nn, optim

__all__ = ["build_mlp", "make_optimizer", "HIDDEN_ACTIVATIONS", "OPTIMIZERS", "DEFAULT_LR"]

# The default network: the source material's deeper MNIST classifier 784-256-128-64-20-10.
INPUT_FEATURES = 784
NUM_CLASSES = 10
DEFAULT_HIDDEN = (256, 128, 64, 20)
# Hidden activations by name and their layer class: nnkern.nn's one table (the classes are
# named alike in torch.nn, with the same defaults: LeakyReLU's slope 0.01, exact GELU).
HIDDEN_ACTIVATIONS = nn.ACTIVATION_LAYERS
# He initialisation suits the rectifiers, Xavier the saturating activations.
_HE_INIT = frozenset({"relu", "leaky_relu", "gelu"})

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adadelta", "adam", "adamw")
# A learning rate that works for each optimizer on MNIST when none is given (nesterov:
# momentum's, the usual drop-in choice; not tuned separately).
DEFAULT_LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "adagrad": 0.01, "rmsprop": 1e-3, "adadelta": 1.0,
              "adam": 1e-3, "adamw": 1e-3}
DEFAULT_MOMENTUM = 0.9


def build_mlp(hidden=DEFAULT_HIDDEN, *, activation="relu", inputs=INPUT_FEATURES,
              outputs=NUM_CLASSES, backend=None, dtype=np.float32, seed=None):
    """A fully connected classifier ``inputs -> hidden... -> outputs`` with ``activation``
    (a key of ``HIDDEN_ACTIVATIONS``, or None for none) after each hidden layer and logits at
    the end (the loss applies the softmax). Layer ``i`` is initialised with seed ``seed + i``
    (None: unseeded)."""
    layer_class = None if activation is None else HIDDEN_ACTIVATIONS[activation]
    init = "he" if activation in _HE_INIT else "xavier"
    sizes = (inputs, *hidden, outputs)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        layer_seed = None if seed is None else seed + i
        layers.append(nn.Linear(n_in, n_out, init=init, seed=layer_seed))
        if layer_class is not None and i < len(sizes) - 2:
            layers.append(layer_class())
    return nn.Sequential(*layers, backend=backend, dtype=dtype)


def make_optimizer(name: str, lr: float | None = None, momentum: float = DEFAULT_MOMENTUM,
                   weight_decay: float = 0.0, *, model=None):
    """The optimizer called ``name`` (one of ``OPTIMIZERS``); ``lr=None`` takes ``DEFAULT_LR``.
    ``weight_decay`` adds ``weight_decay * p`` to every gradient (L2 regularisation); for
    "adamw" it is AdamW's decoupled decay (``p *= 1 - lr * weight_decay`` every step).
    ``model``: bind it to that model's parameters now (None: ``fit`` binds it)."""
    lr = DEFAULT_LR[name] if lr is None else lr
    bound_to = () if model is None else (model,)
    if name == "sgd":
        return optim.SGD(*bound_to, lr=lr, weight_decay=weight_decay)
    if name in ("momentum", "nesterov"):
        return optim.SGD(*bound_to, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=name == "nesterov")
    return {"adagrad": optim.Adagrad, "rmsprop": optim.RMSprop, "adadelta": optim.Adadelta,
            "adam": optim.Adam, "adamw": optim.AdamW}[name](*bound_to, lr=lr, weight_decay=weight_decay)
