"""The contenders: an ``nnkern.nn`` model on one backend, and the same network in PyTorch."""

from __future__ import annotations

import math

import numpy as np

from .._builders import HIDDEN_ACTIVATIONS, build_mlp, make_optimizer
from .machine import TORCH, import_torch
from .networks import Network

LEARNING_RATE = 0.1
# optimizer name -> learning rate; every contender builds its own library's optimizer
OPTIMIZERS = {"sgd": LEARNING_RATE, "adam": 1e-3}


def fused_step_for(model, optimizer, loss, batches):
    """The fused training step of ``model`` for ``batches``, or None where its backend has
    none (the trainer then takes ``model.train_step``): the one place the bench picks its
    training engine. It checks the whole data set once, as ``fit`` does."""
    from ..engine import fused_train_step

    xs = np.concatenate([xb for xb, _ in batches])
    ys = np.concatenate([yb for _, yb in batches])
    return fused_train_step(model, optimizer, loss, xs, ys, max(len(xb) for xb, _ in batches))


class NnkernTrainer:
    """An ``nnkern.nn`` model on one backend, trained by ``nnkern.optim.SGD`` (or ``Adam``),
    each step through the fused training engine where the backend has one (as ``model.fit``
    does), else through ``model.train_step``."""

    def __init__(self, backend: str, network: Network, weights: list[np.ndarray], optimizer: str = "sgd"):
        from .. import nn

        self.backend = backend
        self.weights = weights
        self.model = build_mlp(network.sizes[1:-1], activation=network.activation, inputs=network.sizes[0],
                               outputs=network.sizes[-1], backend=backend, dtype=network.dtype)
        self.loss = nn.CrossEntropyLoss()
        self.optimizer = make_optimizer(optimizer, lr=OPTIMIZERS[optimizer], model=self.model)
        self.fused_step = None

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
        fused step for them where the backend has one (:func:`fused_step_for`)."""
        self.fused_step = fused_step_for(self.model, self.optimizer, self.loss, batches)
        return batches

    def step(self, xb, yb) -> float:
        if self.fused_step is not None:
            return self.fused_step(xb, yb)[0]
        loss, _ = self.model.train_step(xb, yb, self.optimizer, self.loss)
        return loss

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
                layers.append(getattr(torch.nn, HIDDEN_ACTIVATIONS[network.activation])())
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
