"""Optimizers whose biases do not decay (``DECAY_BIASES = False``, scikit-learn's L2 on the
weight matrices alone): the layer path leaves the biases' gradients undecayed, and the fused
steps give the same numbers."""

import numpy as np
import pytest

from nnkern import nn, optim

from _backends import FAST_CPU_BACKENDS


class _SGDWeightsOnly(optim.SGD):
    DECAY_BIASES = False


class _AdamWWeightsOnly(optim.AdamW):
    DECAY_BIASES = False


def _data(n=40):
    rng = np.random.default_rng(1)
    return rng.standard_normal((n, 6)), rng.integers(0, 4, n)


def _model(backend):
    return nn.Sequential(nn.Linear(6, 9, seed=2), nn.ReLU(), nn.Linear(9, 4, seed=3), backend=backend,
                         dtype=np.float64)


def test_the_rule_says_the_biases_do_not_decay():
    rule = _SGDWeightsOnly(0.1, momentum=0.9, weight_decay=0.3).update_rule()
    assert (rule.weight_decay, rule.bias_weight_decay) == (0.3, 0.0)
    assert optim.SGD(0.1, weight_decay=0.3).update_rule().bias_weight_decay == 0.3


def test_only_the_weight_matrices_decay_on_the_layer_path():
    x, y = _data()
    runs = []
    for make in (lambda: _SGDWeightsOnly(0.1, weight_decay=0.5), lambda: optim.SGD(0.1)):
        model = _model("numpy")
        model.compute_gradients(x, y, "cross_entropy")
        grads = [g.copy() for g in model.gradients()]
        params = [p.copy() for p in model.parameters()]
        opt = make()
        opt.bind(model.parameters(), model.gradients(), backend="numpy")
        opt.step()
        runs.append((params, grads, [p.copy() for p in model.parameters()]))
    (params, grads, decayed), (_, _, plain) = runs
    np.testing.assert_allclose(decayed[1], plain[1], rtol=1e-15)  # the bias: no decay
    np.testing.assert_allclose(decayed[0], params[0] - 0.1 * (grads[0] + 0.5 * params[0]), rtol=1e-13)


@pytest.mark.parametrize("backend", FAST_CPU_BACKENDS)
@pytest.mark.parametrize("make", [lambda: _SGDWeightsOnly(0.05, momentum=0.9, weight_decay=0.2),
                                  lambda: _AdamWWeightsOnly(0.01, weight_decay=0.3)])
def test_the_fused_steps_leave_the_biases_undecayed_as_the_layer_path(backend, make):
    x, y = _data()
    runs = []
    for fused in (True, False):
        model = _model(backend)
        history = model.fit(x, y, epochs=3, batch_size=8, optimizer=make(), seed=4, verbose=False, fused=fused)
        runs.append((history.history["loss"], model.state_dict()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-10)
    for name in runs[0][1]:
        np.testing.assert_allclose(runs[0][1][name], runs[1][1][name], rtol=1e-9, atol=1e-12, err_msg=name)
