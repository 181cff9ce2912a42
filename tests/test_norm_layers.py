"""The layers BatchNorm1d and LayerNorm (nnkern.normalization) in models, against torch in
float64 on the reference and every fast CPU backend: outputs and gradients in training
mode, running statistics over training steps (momentum, cumulative average), evaluation
mode, and the variants without affine parameters or running statistics; gradients
against central differences; the constructors' checks."""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import nn, optim
from nnkern.normalization import BatchNorm1d, LayerNorm
from nnkern.grad import assert_gradcheck

torch = pytest.importorskip("torch")


def _torch_linear(layer):
    linear = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.array(layer.W).T))
        linear.bias.copy_(torch.from_numpy(np.array(layer.b)))
    return linear


def _pair(backend, norm, torch_norm):
    """A Linear -> norm -> Tanh -> Linear network in nnkern and the same in torch."""
    first, last = nn.Linear(6, 5, seed=0), nn.Linear(5, 3, seed=1)
    model = nn.Sequential(first, norm, nn.Tanh(), last, backend=backend, dtype=np.float64)
    reference = torch.nn.Sequential(_torch_linear(first), torch_norm, torch.nn.Tanh(), _torch_linear(last))
    return model, reference


def _norm_variants():
    return {
        "batch": (lambda: BatchNorm1d(5, momentum=0.2), lambda: torch.nn.BatchNorm1d(5, momentum=0.2,
                                                                                      dtype=torch.float64)),
        "batch_cumulative": (lambda: BatchNorm1d(5, momentum=None),
                             lambda: torch.nn.BatchNorm1d(5, momentum=None, dtype=torch.float64)),
        "batch_plain": (lambda: BatchNorm1d(5, affine=False, track_running_stats=False),
                        lambda: torch.nn.BatchNorm1d(5, affine=False, track_running_stats=False,
                                                     dtype=torch.float64)),
        "layer": (lambda: LayerNorm(5, eps=1e-3), lambda: torch.nn.LayerNorm(5, eps=1e-3, dtype=torch.float64)),
        "layer_plain": (lambda: LayerNorm((5,), elementwise_affine=False),
                        lambda: torch.nn.LayerNorm(5, elementwise_affine=False, dtype=torch.float64)),
    }


@pytest.mark.parametrize("variant", list(_norm_variants()))
def test_training_steps_match_torch(any_backend, variant):
    """Four SGD steps with momentum on batches of different sizes: losses, every
    parameter and the running statistics agree with torch; then evaluation mode does."""
    make, make_torch = _norm_variants()[variant]
    model, reference = _pair(any_backend, make(), make_torch())
    norm, torch_norm = model.layers[1], reference[1]
    sgd = optim.SGD(0.1, momentum=0.9)
    sgd.bind(model.parameters(), model.gradients(), backend=model.backend)
    torch_sgd = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    for rows in (8, 5, 8, 2):
        x, y = rng.standard_normal((rows, 6)) * 2 + 1, rng.integers(0, 3, rows)
        loss, _ = model.train_step(x, y, sgd, nn.CrossEntropyLoss())
        torch_sgd.zero_grad()
        torch_loss = torch.nn.functional.cross_entropy(reference.train()(torch.from_numpy(x)), torch.from_numpy(y))
        torch_loss.backward()
        torch_sgd.step()
        assert loss == pytest.approx(torch_loss.item(), rel=1e-12, abs=1e-14)
    for (name, p), tp in zip(model.named_parameters(), reference.parameters()):
        expected = tp.detach().numpy().T if name.endswith(".W") else tp.detach().numpy()
        np.testing.assert_allclose(p, expected, rtol=1e-10, atol=1e-12, err_msg=name)
    for name, buffer in getattr(norm, "named_buffers", list)():
        np.testing.assert_allclose(buffer, getattr(torch_norm, name).numpy(), rtol=1e-10, atol=1e-12, err_msg=name)
    x = rng.standard_normal((7, 6))
    with torch.no_grad():
        expected = reference.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.predict(x), expected, rtol=1e-10, atol=1e-12)


def test_evaluation_backward_treats_statistics_as_constants(any_backend):
    """A backward pass after an evaluation-mode forward differentiates through the running
    statistics as constants, as torch does in eval mode."""
    model, reference = _pair(any_backend, BatchNorm1d(5), torch.nn.BatchNorm1d(5, dtype=torch.float64))
    norm = model.layers[1]
    norm.running_mean[...] = np.linspace(-1, 1, 5)
    norm.running_var[...] = np.linspace(0.5, 2, 5)
    with torch.no_grad():
        reference[1].running_mean.copy_(torch.linspace(-1, 1, 5, dtype=torch.float64))
        reference[1].running_var.copy_(torch.linspace(0.5, 2, 5, dtype=torch.float64))
    x = np.random.default_rng(1).standard_normal((4, 6))
    g = np.random.default_rng(2).standard_normal((4, 3))
    model.forward(x, training=False)
    dx = model.backward(g, input_grad=True)
    xt = torch.from_numpy(x).requires_grad_()
    reference.eval()(xt).backward(torch.from_numpy(g))
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(norm.dweight, reference[1].weight.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", [lambda: BatchNorm1d(5), lambda: LayerNorm(5)], ids=["batch", "layer"])
def test_gradients_against_central_differences(any_backend, norm):
    model = nn.Sequential(nn.Linear(4, 5, seed=3), norm(), nn.GELU(), nn.Linear(5, 3, seed=4),
                          backend=any_backend, dtype=np.float64)
    layer = model.layers[1]
    layer.weight[...] = np.linspace(0.5, 1.5, 5)
    layer.bias[...] = np.linspace(-0.3, 0.3, 5)
    if isinstance(layer, BatchNorm1d):
        layer.running_mean[...] = np.linspace(-0.2, 0.2, 5)
        layer.running_var[...] = np.linspace(0.5, 1.5, 5)
    rng = np.random.default_rng(5)
    assert_gradcheck(model, "cross_entropy", rng.standard_normal((6, 4)), rng.integers(0, 3, 6))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fit_with_norm_layers(any_backend, dtype):
    """fit trains a model with both layers (the layer-by-layer path: the fused engines
    take plain MLPs) and moves the running statistics."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((96, 5)).astype(dtype) * 3 + 2
    y = (x[:, 0] > x[:, 4]).astype(np.int64)
    model = nn.Sequential(nn.Linear(5, 16, seed=0), BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16, seed=1),
                          LayerNorm(16), nn.ReLU(), nn.Linear(16, 2, seed=2), backend=any_backend, dtype=dtype)
    before = model.evaluate(x, y)
    model.fit(x, y, epochs=15, batch_size=16, optimizer=optim.Adam(0.01), verbose=False, seed=0)
    after = model.evaluate(x, y)
    assert after[0] < before[0] and after[1] > 0.9
    norm = model.layers[1]
    assert int(norm.num_batches_tracked) == 15 * 6
    assert norm.running_mean.dtype == np.dtype(dtype)
    assert not np.allclose(norm.running_mean, 0)


def test_layer_used_on_its_own_and_its_description():
    norm = BatchNorm1d(3, momentum=None)
    x = np.arange(12.0).reshape(4, 3)
    y = norm.forward(x, training=True)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    assert norm.dtype == np.float64 and norm.backward(np.ones_like(x)).shape == (4, 3)
    assert [name for name, _ in norm.named_parameters()] == ["weight", "bias"]
    assert [name for name, _ in norm.named_buffers()] == ["running_mean", "running_var", "num_batches_tracked"]
    assert BatchNorm1d(**norm.config()).config() == norm.config()
    assert repr(LayerNorm(4)) == "LayerNorm(normalized_shape=4, eps=1e-05, elementwise_affine=True)"
    assert LayerNorm(**LayerNorm((7,), eps=0.1).config()).normalized_shape == (7,)
    assert BatchNorm1d(3, affine=False, track_running_stats=False).named_buffers() == []
    assert LayerNorm(3, elementwise_affine=False).named_parameters() == []


def test_width_mismatch_is_caught_when_the_model_is_built():
    x = nn.Input(4)
    with pytest.raises(ValueError, match=r"BatchNorm1d.*takes inputs of shape \(N x 5\)"):
        nn.Graph(x, BatchNorm1d(5)(x))


@pytest.mark.parametrize("make,error,match", [
    (lambda: BatchNorm1d(0), ValueError, "num_features must be a positive integer"),
    (lambda: BatchNorm1d(3, eps=0), ValueError, "eps must be a finite number > 0"),
    (lambda: BatchNorm1d(3, momentum=1.5), ValueError, r"momentum must be in \[0, 1\] or None"),
    (lambda: BatchNorm1d(3, affine="yes"), TypeError, "affine must be True or False"),
    (lambda: LayerNorm((3, 4)), ValueError, "normalized_shape must be the number of features"),
    (lambda: LayerNorm(2.5), ValueError, "normalized_shape must be the number of features"),
    (lambda: LayerNorm(3, elementwise_affine=None), TypeError, "elementwise_affine must be True or False"),
])
def test_constructor_checks(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_training_batch_of_one_sample_is_refused():
    model = nn.Sequential(nn.Linear(3, 4, seed=0), BatchNorm1d(4), backend="numpy", dtype=np.float64)
    with pytest.raises(ValueError, match="more than one sample"):
        model.forward(np.ones((1, 3)), training=True)
    assert model.predict(np.ones((1, 3))).shape == (1, 4)  # evaluation: the running statistics
