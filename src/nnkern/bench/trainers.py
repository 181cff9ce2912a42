"""The contenders: an ``nnkern.nn`` model on one backend, and the same network in PyTorch."""

from __future__ import annotations

import math

import numpy as np

from .. import nn
from .._builders import HIDDEN_ACTIVATIONS, build_mlp, make_optimizer
from ..training import FusedStep, TrainingStep, select_step
from .machine import TORCH, import_torch
from .networks import Network

LEARNING_RATE = 0.1
# optimizer name -> learning rate; every contender builds its own library's optimizer
OPTIMIZERS = {"sgd": LEARNING_RATE, "adam": 1e-3}


def training_step_for(model, optimizer, loss, batches) -> TrainingStep:
    """The training step of ``model`` for ``batches``, chosen as ``fit`` chooses it
    (:func:`nnkern.training.select_step`: the backend's fused engine where it applies,
    else layer by layer), checking the whole data set once."""
    xs = np.concatenate([xb for xb, _ in batches])
    ys = np.concatenate([yb for _, yb in batches])
    return select_step(model, optimizer, model._objective(loss), [xs], [ys], max(len(xb) for xb, _ in batches))


class NnkernTrainer:
    """An ``nnkern.nn`` model on one backend, trained by ``nnkern.optim.SGD`` (or ``Adam``),
    each step through the fused training engine where the backend has one (as ``model.fit``
    does), else through ``model.train_step``."""

    def __init__(self, backend: str, network: Network, weights: list[np.ndarray], optimizer: str = "sgd"):
        self.backend = backend
        self.weights = weights
        self.model = build_mlp(network.sizes[1:-1], activation=network.activation, inputs=network.sizes[0],
                               outputs=network.sizes[-1], backend=backend, dtype=network.dtype)
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = make_optimizer(optimizer, lr=OPTIMIZERS[optimizer], model=self.model)
        self.training_step: TrainingStep | None = None

    def reset(self) -> None:
        """Back to the initial weights and a fresh optimizer (state zeroed in place: the
        fused step holds those arrays)."""
        for param, value in zip(self.model.parameters(), self.weights, strict=True):
            param[...] = value
        for state in self.optimizer.state:
            for array in state.values():
                array[...] = 0
        self.optimizer.t = 0

    def prepare(self, batches):
        """The batches as this trainer takes them (NumPy arrays: as they are); builds the
        training step for them (:func:`training_step_for`)."""
        self.training_step = training_step_for(self.model, self.optimizer, self.loss, batches)
        return batches

    @property
    def fused_step(self):
        """The fused engine's own step function (with ``profiled`` on "cython"), or None
        where the model trains layer by layer."""
        step = self.training_step
        return step.function if isinstance(step, FusedStep) else None

    def step(self, xb, yb) -> float:
        return self.training_step.step(xb, yb)[0]

    def train(self, batches) -> float:
        loss = math.nan
        for xb, yb in batches:
            loss = self.step(xb, yb)
        return float(loss)

    def accuracy(self, x, y) -> float:
        return float(np.mean(self.model.predict_classes(x) == y))


class TorchTrainer:
    """The same network in PyTorch (CPU, the network's dtype), trained by
    ``torch.optim.SGD`` (or ``Adam``)."""

    backend = TORCH

    def __init__(self, network: Network, weights: list[np.ndarray], optimizer: str = "sgd"):
        torch = import_torch()
        self.torch = torch
        self.weights = weights
        layers = []
        last = len(network.layer_shapes) - 1
        for i, (fan_in, fan_out) in enumerate(network.layer_shapes):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < last:
                layers.append(getattr(torch.nn, HIDDEN_ACTIVATIONS[network.activation].__name__)())
        self.model = torch.nn.Sequential(*layers).to(getattr(torch, network.dtype))
        self.loss = torch.nn.CrossEntropyLoss()
        make = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
        self.optimizer = make(self.model.parameters(), lr=OPTIMIZERS[optimizer])

    def reset(self) -> None:
        """Back to the initial weights and a fresh optimizer state."""
        with self.torch.no_grad():
            for param, value in zip(self.model.parameters(), self.weights, strict=True):
                # torch keeps W as (out, in); ours is (in, out)
                param.copy_(self.torch.from_numpy(value.T if value.ndim == 2 else value))
        self.optimizer.state.clear()  # torch.optim initialises it again on the next step

    def prepare(self, batches):
        """The batches as tensors sharing the NumPy arrays' memory."""
        return [(self.torch.from_numpy(xb), self.torch.from_numpy(yb)) for xb, yb in batches]

    def train(self, batches) -> float:
        loss = None
        for xb, yb in batches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(xb), yb)
            loss.backward()
            self.optimizer.step()
        return loss.item() if loss is not None else math.nan

    def accuracy(self, x, y) -> float:
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor(x))  # a copy: x may be read-only
        return float(np.mean(logits.argmax(dim=1).numpy() == y))


def make_trainer(name: str, network: Network, weights: list[np.ndarray], optimizer: str = "sgd"):
    """The trainer of contender ``name``: "torch", or an nnkern backend."""
    if name == TORCH:
        return TorchTrainer(network, weights, optimizer)
    return NnkernTrainer(name, network, weights, optimizer)


# Untimed pause before each timed epoch. The previous contender's idle workers keep spinning
