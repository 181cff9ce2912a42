"""The networks ``nnkern bench`` trains on MNIST, their initial weights and their batches."""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from .._builders import HIDDEN_ACTIVATIONS

DTYPE = np.float32  # the default dtype of a network
# The input scalings of the source material: x / 255 ("unit", MNIST 81% zeros) and
# (x / 255 - 0.5) / 0.5 ("symmetric", no zeros).
NORMALIZATIONS = {"unit": "[0, 1]", "symmetric": "[-1, 1]"}


@dataclasses.dataclass(frozen=True)
class Network:
    """A fully connected network on MNIST: layer widths, the hidden activation, the batch
    size, the input scaling (a key of ``NORMALIZATIONS``) and the dtype."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    batch_size: int
    normalize: str = "unit"
    dtype: str = "float32"

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        return list(zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def flops_per_sample(self) -> int:
        """Useful GEMM FLOPs of one training sample (see the module docstring)."""
        products = [fan_in * fan_out for fan_in, fan_out in self.layer_shapes]
        return 4 * sum(products) + 2 * sum(products[1:])

    @property
    def inputs(self) -> str:
        """The input scaling in words, e.g. "inputs in [-1, 1]"."""
        return f"inputs in {NORMALIZATIONS[self.normalize]}"

    def data(self, x_unit):
        """MNIST images as this network takes them, from pixels / 255 (``x_unit``)."""
        x = x_unit if self.normalize == "unit" else (x_unit - 0.5) / 0.5
        return np.ascontiguousarray(x, dtype=self.dtype)


def custom_network(hidden=(256, 128, 64, 20), activation: str = "relu", batch_size: int = 64,
                   normalize: str = "symmetric", dtype: str = "float32") -> Network:
    """The user's own MNIST network (784 inputs, ``hidden`` widths, 10 classes); ValueError
    names a bad choice."""
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden}")
    if activation not in HIDDEN_ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(HIDDEN_ACTIVATIONS)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown input scaling {normalize!r}; choose from {', '.join(NORMALIZATIONS)}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    sizes = (784, *hidden, 10)
    return Network("-".join(map(str, sizes)) + f" {activation}", sizes, activation, int(batch_size), normalize,
                   np.dtype(dtype).name)


_TWO_LAYER = Network("784-100-10 sigmoid", (784, 100, 10), "sigmoid", 100)
_DEEP = Network("784-256-128-64-20-10 relu", (784, 256, 128, 64, 20, 10), "relu", 64)
NETWORKS = (
    _TWO_LAYER,
    dataclasses.replace(_TWO_LAYER, normalize="symmetric"),
    _DEEP,
    dataclasses.replace(_DEEP, normalize="symmetric"),
)


def initial_weights(network: Network, seed: int = 0) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] as PyTorch initialises nn.Linear: U(-1/sqrt(in), 1/sqrt(in)),
    W of shape (in, out), in the network's dtype."""
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in network.layer_shapes:
        bound = 1.0 / math.sqrt(fan_in)
        weights.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(network.dtype))
        weights.append(rng.uniform(-bound, bound, fan_out).astype(network.dtype))
    return weights


def epoch_batches(x, y, batch_size: int, samples: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``samples`` training samples in one seeded random order, cut into contiguous batches
    (copies made here, outside any timing; a final short batch is dropped)."""
    order = np.random.default_rng(seed).permutation(len(x))[: samples - samples % batch_size]
    xs, ys = np.ascontiguousarray(x[order]), np.ascontiguousarray(y[order], dtype=np.int64)
    return [(xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, len(order), batch_size)]
