"""Gradient clipping by global norm (nnkern._clip.clip_grad_norm_) against
torch.nn.utils.clip_grad_norm_ in float64 on every CPU backend, and the vector kernels it
is built on (ops.sum_squares, ops.max_abs, ops.scale) against the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from nnkern import nn, ops, optim
from nnkern._clip import clip_grad_norm_
from _tolerance import rtol

torch = pytest.importorskip("torch")

SIZES = [1, 7, 8192, 8193, 40_009]  # one element, a prime, around a Cython chunk, past the threading threshold


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", SIZES)
def test_vector_kernels_match_reference(fast_backend, threads, size, dtype):
    x = (np.random.default_rng(size).standard_normal(size) * 3).astype(dtype)
    assert ops.sum_squares(x, backend=fast_backend) == pytest.approx(ops.sum_squares(x, backend="numpy"),
                                                                     rel=1e-12)
    assert ops.max_abs(x, backend=fast_backend) == ops.max_abs(x, backend="numpy")
    scaled, want = x.copy(), x.copy()
    ops.scale(scaled, 0.37, backend=fast_backend)
    ops.scale(want, 0.37, backend="numpy")
    np.testing.assert_allclose(scaled, want, rtol=rtol(dtype))


def test_vector_kernels_shapes_nan_and_errors(any_backend):
    x = np.arange(12.0).reshape(3, 4)
    assert ops.sum_squares(x, backend=any_backend) == float(np.sum(x * x))
    assert ops.sum_squares(np.empty(0), backend=any_backend) == 0.0
    assert ops.max_abs(-x, backend=any_backend) == 11.0
    with_nan = np.array([1.0, np.nan, 5.0] + [2.0] * 40_000)
    assert math.isnan(ops.max_abs(with_nan, backend=any_backend))
    assert math.isnan(ops.max_abs(with_nan[::-1].copy(), backend=any_backend))
    strided = np.ones((4, 6))[:, ::2]
    ops.scale(strided, 2.5, backend=any_backend)  # a view: scaled in place through a copy
    np.testing.assert_array_equal(strided, 2.5)
    with pytest.raises(TypeError, match="scaled in place"):
        ops.scale([1.0, 2.0], 2.0, backend=any_backend)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.scale(np.arange(3), 2.0, backend=any_backend)
    with pytest.raises(TypeError, match="alpha must be a real number"):
        ops.scale(np.ones(3), "2", backend=any_backend)


def _model_and_torch(backend):
    """A small network with gradients from one backward pass, and the same in torch."""
    model = nn.Sequential(nn.Linear(5, 7, seed=0), nn.Tanh(), nn.Linear(7, 3, seed=1), backend=backend,
                          dtype=np.float64)
    reference = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).double()
    with torch.no_grad():
        for layer, module in ((model.layers[0], reference[0]), (model.layers[2], reference[2])):
            module.weight.copy_(torch.from_numpy(layer.W.T))
            module.bias.copy_(torch.from_numpy(layer.b))
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((6, 5)) * 4, rng.integers(0, 3, 6)
    model.compute_gradients(x, y, "cross_entropy")
    torch.nn.functional.cross_entropy(reference(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    return model, reference


@pytest.mark.parametrize("norm_type", [2.0, math.inf, "inf"])
@pytest.mark.parametrize("max_norm", [0.05, 1e3])
def test_against_torch(any_backend, norm_type, max_norm):
    """The returned norm and the clipped gradients (clipping, or not when below max_norm)."""
    model, reference = _model_and_torch(any_backend)
    total = clip_grad_norm_(model, max_norm, norm_type=norm_type)
    torch_total = torch.nn.utils.clip_grad_norm_(reference.parameters(), max_norm,
                                                 norm_type=float(norm_type))
    assert total == pytest.approx(torch_total.item(), rel=1e-13)
    for (name, g), p in zip(zip([n for n, _ in model.named_parameters()], model.gradients()), reference.parameters()):
        expected = p.grad.numpy().T if name.endswith(".W") else p.grad.numpy()
        np.testing.assert_allclose(g, expected, rtol=1e-13, atol=1e-16, err_msg=name)


def test_optimizer_arrays_and_hand_written_loop(any_backend):
    """From a bound optimizer or a list of arrays; in a loop: clip between backward and step."""
    model, _ = _model_and_torch(any_backend)
    sgd = optim.SGD(0.1)
    sgd.bind(model.parameters(), model.gradients(), backend=model.backend)
    before = np.sqrt(sum(np.sum(g * g) for g in model.gradients()))
    assert clip_grad_norm_(sgd, 0.5) == pytest.approx(before, rel=1e-13)
    assert np.sqrt(sum(np.sum(g * g) for g in model.gradients())) == pytest.approx(0.5, rel=1e-5)
    arrays = [np.full(4, 3.0), np.full((2, 2), 4.0)]
    assert clip_grad_norm_(arrays, 1.0, backend=any_backend) == pytest.approx(10.0)
    np.testing.assert_allclose(arrays[0], 3.0 / (10.0 + 1e-6))


def test_nonfinite_norms_as_torch(any_backend):
    grads = [np.array([1.0, np.nan]), np.array([2.0])]
    with pytest.raises(RuntimeError, match="non-finite"):
        clip_grad_norm_(grads, 1.0, error_if_nonfinite=True, backend=any_backend)
    torch_grads = [torch.tensor(g) for g in grads]
    params = [torch.zeros_like(t, requires_grad=True) for t in torch_grads]
    for p, t in zip(params, torch_grads):
        p.grad = t.clone()
    for norm_type in (2.0, math.inf):
        arrays = [g.copy() for g in grads]
        assert math.isnan(clip_grad_norm_(arrays, 1.0, norm_type=norm_type, backend=any_backend))
        assert math.isnan(torch.nn.utils.clip_grad_norm_(params, 1.0, norm_type=norm_type).item())
        for a, p in zip(arrays, params):
            np.testing.assert_array_equal(a, p.grad.numpy())  # NaN everywhere, as torch leaves them


def test_argument_checks():
    with pytest.raises(ValueError, match="norm_type must be 2 or inf"):
        clip_grad_norm_([np.ones(2)], 1.0, norm_type=1)
    with pytest.raises(ValueError, match="max_norm must be a finite number >= 0"):
        clip_grad_norm_([np.ones(2)], -1.0)
    with pytest.raises(TypeError, match="expected a model, a bound optimizer, or gradient arrays"):
        clip_grad_norm_(3, 1.0)
    assert clip_grad_norm_([], 1.0) == 0.0
