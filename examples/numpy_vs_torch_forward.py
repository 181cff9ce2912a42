"""A forward pass written by hand in NumPy, checked against PyTorch with the same weights
(and against nnkern's own model holding them).

The network is 784-256-128-10 with ReLU; its weights come from an nnkern model, are copied
into a torch.nn.Sequential (torch stores Linear weights as (out, in), nnkern as (in, out),
hence the transpose), and the three forward passes are compared on a batch of MNIST-sized
inputs. Without PyTorch the comparison with torch is skipped, with a message.

    python examples/numpy_vs_torch_forward.py
"""

from __future__ import annotations

import numpy as np

from nnkern import nn

SIZES = (784, 256, 128, 10)


def numpy_forward(x, weights, biases):
    """ReLU(x W + b) through the hidden layers, then the logits, then a stable softmax."""
    h = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w + b
        if i < len(weights) - 1:
            h = np.maximum(h, 0.0)
    shifted = h - h.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def torch_forward(x, weights, biases):
    """The same network in PyTorch with the same weights, or None without PyTorch."""
    try:
        import torch
    except ImportError:
        return None
    layers = []
    for i, (w, b) in enumerate(zip(weights, biases)):
        linear = torch.nn.Linear(*w.shape, dtype=torch.float64)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
            linear.bias.copy_(torch.from_numpy(b))
        layers.append(linear)
        if i < len(weights) - 1:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers, torch.nn.Softmax(dim=1))
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def main(*, batch=32, seed=0, backend=None):
    """Returns the largest absolute differences {"nnkern": ..., "torch": ... or None}
    between each forward pass and the hand-written NumPy one (float64)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(SIZES, SIZES[1:])):
        layers.append(nn.Linear(n_in, n_out, seed=seed + i))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers, nn.Softmax(), backend=backend, dtype=np.float64)
    params = model.parameters()
    weights, biases = params[0::2], params[1::2]

    x = np.random.default_rng(seed).random((batch, SIZES[0]))
    expected = numpy_forward(x, weights, biases)
    differences = {"nnkern": float(np.abs(model.predict(x) - expected).max())}
    print(f"nnkern model vs hand-written NumPy: max |difference| {differences['nnkern']:.2e}")

    from_torch = torch_forward(x, weights, biases)
    if from_torch is None:
        differences["torch"] = None
        print("PyTorch is not installed (pip install nnkern[torch]): comparison with torch skipped")
    else:
        differences["torch"] = float(np.abs(from_torch - expected).max())
        print(f"PyTorch vs hand-written NumPy:      max |difference| {differences['torch']:.2e}")
    return differences


if __name__ == "__main__":
    main()
