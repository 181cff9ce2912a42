"""The fused training step split over a team of threads (one parallel region per step,
kernels/cython/nnk_team.h): a model large enough to be split gives the numbers of the
layer-by-layer path, for every thread count, optimizer, dtype and activation kind, and
ragged last batches."""

from __future__ import annotations

import numpy as np
import pytest

import nnkern
from nnkern import nn, optim

pytestmark = pytest.mark.skipif("cython" not in nnkern.available_backends(), reason="needs the cython backend")

# 64 x 150 x 97 is above the size at which the step is split over threads; the odd widths
# leave partial tiles and uneven shares at every split.
WIDTHS = (150, 97, 61, 10)
OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum_wd": lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3),
    "adagrad": lambda: optim.Adagrad(lr=0.05),
    "rmsprop": lambda: optim.RMSprop(lr=0.01),
    "adadelta": lambda: optim.Adadelta(),
    "adam": lambda: optim.Adam(lr=1e-3, weight_decay=1e-4),
    "adamw": lambda: optim.AdamW(lr=1e-2, weight_decay=0.5),
    "nesterov_wd": lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-3, nesterov=True),
}


def _train(act, make_optimizer, dtype, fused):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((203, WIDTHS[0])).astype(dtype)  # 3 batches of 64, then 11 rows
    y = rng.integers(0, WIDTHS[-1], len(x))
    layers = []
    for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
        layers.append(nn.Linear(a, b, seed=i))
        if i < len(WIDTHS) - 2:
            layers.append(act())
    model = nn.Sequential(*layers, backend="cython", dtype=dtype)
    history = model.fit(x, y, epochs=2, batch_size=64, optimizer=make_optimizer(), seed=3,
                        verbose=False, fused=fused)
    return history.history["loss"], [p.copy() for p in model.parameters()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_split_step_equals_layer_by_layer(threads, dtype, name):
    tol = 2e-4 if dtype == np.float32 else 1e-10
    want_loss, want_params = _train(nn.ReLU, OPTIMIZERS[name], dtype, fused=False)
    got_loss, got_params = _train(nn.ReLU, OPTIMIZERS[name], dtype, fused=True)
    np.testing.assert_allclose(got_loss, want_loss, rtol=tol)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol)


# GELU and a negative leaky slope keep the pre-activation (an extra split phase); sigmoid
# takes its derivative from the output.
@pytest.mark.parametrize("act", [nn.Sigmoid, lambda: nn.GELU(), lambda: nn.LeakyReLU(-0.5)],
                         ids=["sigmoid", "gelu", "leaky_neg"])
def test_split_step_every_activation_kind(threads, act):
    make = OPTIMIZERS["momentum_wd"]
    want_loss, want_params = _train(act, make, np.float64, fused=False)
    got_loss, got_params = _train(act, make, np.float64, fused=True)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-10)
    for got, want in zip(got_params, want_params):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def test_split_step_is_deterministic(threads):
    first = _train(nn.ReLU, OPTIMIZERS["adam"], np.float32, fused=True)
    second = _train(nn.ReLU, OPTIMIZERS["adam"], np.float32, fused=True)
    assert first[0] == second[0]
    for a, b in zip(first[1], second[1]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("act", [nn.ReLU, lambda: nn.GELU()], ids=["relu", "gelu"])
def test_profiled_step_times_every_phase_and_computes_the_same(threads, act):
    from nnkern.engine import fused_train_step

    rng = np.random.default_rng(4)
    x = rng.standard_normal((64, WIDTHS[0])).astype(np.float32)
    y = rng.integers(0, WIDTHS[-1], len(x))

    def build():
        layers = []
        for i, (a, b) in enumerate(zip(WIDTHS, WIDTHS[1:])):
            layers += [nn.Linear(a, b, seed=i)] + ([act()] if i < len(WIDTHS) - 2 else [])
        model = nn.Sequential(*layers, backend="cython", dtype=np.float32)
        opt = optim.Adam(model, lr=1e-3)
        return model, fused_train_step(model, opt, nn.CrossEntropyLoss(), x, y, 64)

    plain_model, plain = build()
    timed_model, timed = build()
    names = timed.phase_names()
    # a forward phase per layer (two where the pre-activation is kept), the loss, a
    # backward phase per layer (the first layer's update runs inside its own)
    kept = 2 if act is not nn.ReLU else 0
    assert len(names) == 2 * (len(WIDTHS) - 1) + 1 + kept
    for _ in range(3):
        loss, correct = plain(x, y)
        timed_loss, timed_correct, phases = timed.profiled(x, y)
        assert (timed_loss, timed_correct) == (loss, correct)
        assert len(phases) == len(names) and all(seconds >= 0 for seconds in phases)
    for a, b in zip(plain_model.parameters(), timed_model.parameters()):
        np.testing.assert_array_equal(a, b)
