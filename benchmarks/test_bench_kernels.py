"""Per-kernel benchmarks: every nnkern backend, and NumPy / PyTorch where they compute the
same thing, one group per kernel and shape so that the table compares them directly.

Each benchmark first checks its contender's result against the NumPy reference backend
(as llm.c's dev/cuda benchmarks do), then times it. Shapes are those of MNIST training:
the first layer of the 784-256-128-64-20-10 network at batch 64 (forward, weight gradient,
input gradient) and 128, the TwoLayerNet's first layer at batch 100, and the optimizer
updates over all parameters of each network.
"""

from __future__ import annotations

import numpy as np
import pytest
from bench_support import CONTENDERS, REFERENCE, assert_matches, contenders, torch

from nnkern import bench, ops


def _group(name):
    return pytest.mark.benchmark(group=name)


# ---------------------------------------------------------------------------------------
# GEMM: out = op(a) @ op(b)
# ---------------------------------------------------------------------------------------

GEMMS = [
    pytest.param((64, 784), (784, 256), False, False, marks=_group("gemm x @ W (64x784)@(784x256)"), id="fwd64"),
    pytest.param((64, 784), (64, 256), True, False, marks=_group("gemm x.T @ dY x(64,784) dY(64,256)"), id="dW64"),
    pytest.param((64, 256), (784, 256), False, True, marks=_group("gemm dY @ W.T dY(64,256) W(784,256)"), id="dX64"),
    pytest.param((128, 784), (784, 256), False, False, marks=_group("gemm x @ W (128x784)@(784x256)"), id="fwd128"),
    pytest.param((2048, 2048), (2048, 2048), False, False,
                 marks=[_group("gemm 2048^3"), pytest.mark.large], id="2048cubed"),
]


def _gemm(contender, a, b, trans_a, trans_b, out):
    """A no-argument callable computing op(a) @ op(b) into ``out`` on ``contender``."""
    if contender in CONTENDERS:
        return lambda: ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, out=out, backend=contender)
    a_op, b_op = (a.T if trans_a else a), (b.T if trans_b else b)
    if contender == "np.matmul":
        return lambda: np.matmul(a_op, b_op, out=out)
    ta, tb, tout = torch.from_numpy(a_op), torch.from_numpy(b_op), torch.from_numpy(out)
    return lambda: torch.matmul(ta, tb, out=tout)


@pytest.mark.parametrize("contender", contenders("np.matmul", "torch"))
@pytest.mark.parametrize("a_shape, b_shape, trans_a, trans_b", GEMMS)
def test_gemm(benchmark, rng, contender, a_shape, b_shape, trans_a, trans_b):
    a = rng.standard_normal(a_shape, dtype=np.float32)
    b = rng.standard_normal(b_shape, dtype=np.float32)
    expected = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, backend=REFERENCE)
    out = np.empty_like(expected)
    gemm = _gemm(contender, a, b, trans_a, trans_b, out)
    gemm()
    assert_matches(out, expected, f"{contender} gemm")
    benchmark(gemm)
    m, n = expected.shape
    k = a_shape[0] if trans_a else a_shape[1]
    benchmark.extra_info["gflop"] = 2 * m * n * k / 1e9


# ---------------------------------------------------------------------------------------
# Fused linear layer: act(x @ W + b)
# ---------------------------------------------------------------------------------------

LINEARS = [
    pytest.param((64, 784, 256), "relu", marks=_group("linear relu (64x784)@(784x256)"), id="relu64"),
    pytest.param((100, 784, 100), "sigmoid", marks=_group("linear sigmoid (100x784)@(784x100)"), id="sigmoid100"),
]


@pytest.mark.parametrize("contender", contenders("torch"))
@pytest.mark.parametrize("shape, act", LINEARS)
def test_linear(benchmark, rng, contender, shape, act):
    n, fan_in, fan_out = shape
    x = rng.random((n, fan_in), dtype=np.float32)
    w = rng.standard_normal((fan_in, fan_out), dtype=np.float32) / np.sqrt(fan_in, dtype=np.float32)
    b = rng.standard_normal(fan_out, dtype=np.float32)
    expected = ops.linear(x, w, b, act, backend=REFERENCE)
    out = np.empty_like(expected)
    if contender == "torch":
        tx, tw, tb, tout = (torch.from_numpy(v) for v in (x, w, b, out))
        activate = {"relu": torch.relu_, "sigmoid": torch.sigmoid_}[act]
        layer = lambda: activate(torch.addmm(tb, tx, tw, out=tout))  # noqa: E731
    else:
        layer = lambda: ops.linear(x, w, b, act, out=out, backend=contender)  # noqa: E731
    layer()
    assert_matches(out, expected, f"{contender} linear {act}")
    benchmark(layer)


# ---------------------------------------------------------------------------------------
# Fused softmax + cross entropy: (mean loss, dlogits)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("contender", contenders("torch"))
@pytest.mark.parametrize("rows", [
    pytest.param(64, marks=_group("softmax_cross_entropy (64,10)"), id="64"),
    pytest.param(128, marks=_group("softmax_cross_entropy (128,10)"), id="128"),
])
def test_softmax_cross_entropy(benchmark, rng, contender, rows):
    logits = 3 * rng.standard_normal((rows, 10), dtype=np.float32)
    labels = rng.integers(0, 10, rows)
    expected_loss, expected_grad = ops.softmax_cross_entropy(logits, labels, backend=REFERENCE)
    if contender == "torch":
        tlogits = torch.from_numpy(logits).requires_grad_()
        tlabels = torch.from_numpy(labels)

        def loss_and_grad():
            loss = torch.nn.functional.cross_entropy(tlogits, tlabels)
            (grad,) = torch.autograd.grad(loss, tlogits)
            return loss.item(), grad.numpy()
    else:
        dlogits = np.empty_like(logits)

        def loss_and_grad():
            return ops.softmax_cross_entropy(logits, labels, out=dlogits, backend=contender)

    loss, grad = loss_and_grad()
    assert_matches(loss, expected_loss, f"{contender} cross-entropy loss")
    assert_matches(grad, expected_grad, f"{contender} cross-entropy gradient")
    benchmark(loss_and_grad)


# ---------------------------------------------------------------------------------------
# Optimizer updates over every parameter of an MNIST network, one array after another
# ---------------------------------------------------------------------------------------

# name: (nnkern op, its state arrays, hyperparameters, the same optimizer in torch.optim)
UPDATES = {
    "sgd": (ops.sgd_update, (), dict(lr=0.01),
            lambda ps: torch.optim.SGD(ps, lr=0.01)),
    "momentum": (ops.momentum_update, ("v",), dict(lr=0.01, momentum=0.9),
                 lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)),
    "adagrad": (ops.adagrad_update, ("h",), dict(lr=0.01, eps=1e-10),
                lambda ps: torch.optim.Adagrad(ps, lr=0.01, eps=1e-10)),
    "rmsprop": (ops.rmsprop_update, ("h",), dict(lr=0.01, alpha=0.99, eps=1e-8),
                lambda ps: torch.optim.RMSprop(ps, lr=0.01, alpha=0.99, eps=1e-8)),
    "adadelta": (ops.adadelta_update, ("h", "d"), dict(lr=1.0, rho=0.9, eps=1e-6),
                 lambda ps: torch.optim.Adadelta(ps, lr=1.0, rho=0.9, eps=1e-6)),
    "adam": (ops.adam_update, ("m", "v"), dict(t=1, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8),
             lambda ps: torch.optim.Adam(ps, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)),
}

UPDATE_CASES = [
    pytest.param(name, network, marks=_group(f"update {name}: {network.name} parameters"),
                 id=f"{name}-{network.sizes[1]}")
    for network in {n.name: n for n in bench.NETWORKS}.values()  # the input scaling leaves the parameters alike
    for name in UPDATES
]


def _nnkern_step(update, state_names, hyper, backend, params, grads):
    """One optimizer step over all parameters, with zeroed state, as a no-argument callable."""
    states = [[np.zeros_like(p) for _ in state_names] for p in params]

    def step():
        for p, g, state in zip(params, grads, states):
            update(p, g, *state, **hyper, backend=backend)

    return step


def _torch_step(make_optimizer, params, grads):
    tparams = [torch.from_numpy(p).requires_grad_() for p in params]
    for tp, g in zip(tparams, grads):
        tp.grad = torch.from_numpy(g)
    optimizer = make_optimizer(tparams)
    return optimizer.step


@pytest.mark.parametrize("contender", contenders("torch"))
@pytest.mark.parametrize("name, network", UPDATE_CASES)
def test_optimizer_update(benchmark, rng, contender, name, network):
    update, state_names, hyper, torch_optimizer = UPDATES[name]
    initial = bench.initial_weights(network)
    grads = [rng.standard_normal(p.shape, dtype=np.float32) for p in initial]
    expected = [p.copy() for p in initial]
    _nnkern_step(update, state_names, hyper, REFERENCE, expected, grads)()
    params = [p.copy() for p in initial]
    if contender == "torch":
        step = _torch_step(torch_optimizer, params, grads)
    else:
        step = _nnkern_step(update, state_names, hyper, contender, params, grads)
    step()
    for i, (p, e) in enumerate(zip(params, expected)):
        assert_matches(p, e, f"{contender} {name} update of parameter {i}")
    benchmark(step)
    benchmark.extra_info["parameters"] = int(sum(p.size for p in params))
