"""The "cuda" engine (backends/cuda_train.py): whole epochs on the device equal the
layer-by-layer path to round-off, with both executors, every optimizer rule, split-K
GEMMs and a non-finite loss.

Runs under Numba's CUDA simulator (or on a GPU): see conftest.py. The simulator runs one
block of Python threads at a time (8 x 8 of them, SIMULATOR_BLOCK_SIDE, but for one test),
so the models and data sets are tiny; the plan is made for a larger grid than it runs
(SIMULATOR_PARALLELISM), so that even these shapes get split and differently tiled GEMMs.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import engine, nn, optim
from nnkern.backends import cuda_train


def _data(n=21, width=40, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, width)), rng.integers(0, classes, n)


def _deep_model(backend, dtype=np.float64):
    """GELU keeps its pre-activation for the gradient, tanh computes it from the output,
    and the last Linear is followed by an activation."""
    return nn.Sequential(nn.Linear(40, 17, seed=0), nn.GELU(), nn.Linear(17, 9, seed=1), nn.Tanh(),
                         nn.Linear(9, 4, seed=2), nn.Sigmoid(), backend=backend, dtype=dtype)


def _small_model(backend, dtype, act=nn.ReLU):
    return nn.Sequential(nn.Linear(40, 6, seed=0), act(), nn.Linear(6, 4, seed=1), backend=backend, dtype=dtype)


@pytest.fixture
def split_gemms(monkeypatch):
    """Plans that split K of these small GEMMs and tile them in more than one size."""
    monkeypatch.setattr(cuda_train, "SIMULATOR_PARALLELISM", 32)
    monkeypatch.setattr(cuda_train, "MIN_SPLIT_K", 16)


def _fit_both(make_model, make_optimizer, x, y, **fit_args):
    """(history, weights, optimizer state) of fit on "cuda" and on the NumPy reference."""
    runs = []
    for backend in ("cuda", "numpy"):
        model, opt = make_model(backend), make_optimizer()
        history = model.fit(x, y, optimizer=opt, verbose=False, **fit_args)
        runs.append((history.history, model.state_dict(), opt.state_dict()))
    return runs


def _assert_same_training(runs, rtol):
    (got, got_weights, got_opt), (want, want_weights, want_opt) = runs
    for key, values in want.items():
        np.testing.assert_allclose(got[key], values, rtol=rtol, err_msg=key)
    for name, values in want_weights.items():
        np.testing.assert_allclose(got_weights[name], values, rtol=rtol, atol=rtol * 1e-3, err_msg=name)
    assert got_opt["t"] == want_opt["t"]
    for got_state, want_state in zip(got_opt["state"], want_opt["state"]):
        for key in want_state:
            np.testing.assert_allclose(got_state[key], want_state[key], rtol=rtol, atol=rtol * 1e-5)


def test_device_epochs_equal_the_layer_by_layer_path(split_gemms, monkeypatch):
    """The persistent executor: two shuffled epochs with a short last batch, Adam with
    weight decay; one launch per step (STEPS_PER_LAUNCH)."""
    monkeypatch.setenv("NNKERN_CUDA_EXECUTOR", "persistent")
    monkeypatch.setattr(cuda_train, "STEPS_PER_LAUNCH", 1)
    x, y = _data(n=13)
    runs = _fit_both(_deep_model, lambda: optim.Adam(0.02, weight_decay=0.01), x, y, epochs=2, batch_size=8,
                     seed=5)
    _assert_same_training(runs, rtol=1e-10)
    assert runs[0][2]["t"] == 4


@pytest.mark.parametrize("nesterov", [False, True], ids=["momentum", "nesterov"])
def test_the_launches_executor_computes_the_same(split_gemms, monkeypatch, nesterov):
    monkeypatch.setenv("NNKERN_CUDA_EXECUTOR", "launches")
    x, y = _data(n=11)
    runs = _fit_both(lambda backend: _small_model(backend, np.float64, nn.GELU),
                     lambda: optim.SGD(0.2, momentum=0.9, weight_decay=0.01, nesterov=nesterov), x, y, epochs=1,
                     batch_size=8, seed=2)
    _assert_same_training(runs, rtol=1e-10)


def test_fit_runs_whole_epochs_on_the_device(monkeypatch, device_epochs):
    """fit trains through run_epoch (one read-back per epoch), in the loader's order; with
    the GPU's 16 x 16-thread blocks rather than the simulator's 8 x 8."""
    monkeypatch.setattr(cuda_train, "SIMULATOR_BLOCK_SIDE", cuda_train.BLOCK_SIDE)
    x, y = _data(n=8)
    histories, rates, weights = [], [], []
    for backend in ("cuda", "numpy"):
        model = _small_model(backend, np.float64)
        # a schedule stepped after every batch: each device step has its own rate
        opt = optim.SGD(0.3, momentum=0.9, schedule=optim.ExponentialLR(0.5, interval="step"))
        histories.append(model.fit(x, y, epochs=2, batch_size=5, optimizer=opt, seed=1, verbose=False).history)
        rates.append(opt.lr)
        weights.append(model.state_dict())
    assert device_epochs == [2, 2]
    np.testing.assert_allclose(histories[0]["loss"], histories[1]["loss"], rtol=1e-12)
    assert histories[0]["accuracy"] == histories[1]["accuracy"]
    assert rates[0] == rates[1] == 0.3 * 0.5**4
    for name, values in weights[1].items():
        np.testing.assert_allclose(weights[0][name], values, rtol=1e-12, atol=1e-15, err_msg=name)


OPTIMIZERS = {
    "sgd": lambda: optim.SGD(lr=0.1),
    "momentum": lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-2),
    "adagrad": lambda: optim.Adagrad(lr=0.05),
    "rmsprop": lambda: optim.RMSprop(lr=0.01),
    "adadelta": lambda: optim.Adadelta(),
    "adam": lambda: optim.Adam(lr=1e-2, weight_decay=1e-3),
    "adamw": lambda: optim.AdamW(lr=1e-2, weight_decay=0.1),
    "nesterov": lambda: optim.SGD(lr=0.05, momentum=0.9, weight_decay=1e-2, nesterov=True),
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_rule_in_float32(name):
    """A step of the per-batch API (``step(xb, yb)``), on fewer rows than the step was made
    for, against the reference's train_step, for each optimizer rule."""
    x, y = _data(n=8)
    x = x.astype(np.float32)
    cuda_model, reference = _small_model("cuda", np.float32, nn.Sigmoid), _small_model("numpy", np.float32, nn.Sigmoid)
    cuda_opt, ref_opt = OPTIMIZERS[name](), OPTIMIZERS[name]()
    cuda_opt.bind(cuda_model.parameters(), cuda_model.gradients(), backend="cuda")
    ref_opt.bind(reference.parameters(), reference.gradients(), backend="numpy")
    step = engine.fused_train_step(cuda_model, cuda_opt, nn.CrossEntropyLoss(), x, y, 8)
    loss, correct = step(x[:5], y[:5])
    want_loss, output = reference.train_step(x[:5], y[:5], ref_opt, nn.CrossEntropyLoss())
    assert loss == pytest.approx(want_loss, rel=1e-5)
    assert correct == nn.CrossEntropyLoss().correct(output, y[:5])
    assert cuda_opt.t == ref_opt.t == 1
    for got, want in zip(cuda_model.parameters(), reference.parameters()):
        np.testing.assert_allclose(got.copy_to_host(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_a_nonfinite_loss_stops_the_epoch_after_that_step(monkeypatch):
    """As on the layer path: the error names the step, and the weights are those after
    its update (no later step ran, in this launch or the next)."""
    monkeypatch.setattr(cuda_train, "STEPS_PER_LAUNCH", 2)
    x, y = _data(n=16)
    outcomes = []
    for backend in ("cuda", "numpy"):
        model = _small_model(backend, np.float64)
        with pytest.raises(nn.NonFiniteLossError) as error:
            model.fit(x * 1e6, y, epochs=1, batch_size=4, optimizer=optim.SGD(lr=1e150), shuffle=False,
                      verbose=False)
        outcomes.append((str(error.value), model.state_dict()))
    assert "step 1 of 4" not in outcomes[1][0]  # the test needs a step after the first to fail
    assert outcomes[0][0] == outcomes[1][0]
    for name, values in outcomes[1][1].items():
        np.testing.assert_allclose(outcomes[0][1][name], values, rtol=1e-10, equal_nan=True, err_msg=name)


def test_the_device_step_is_made_only_where_it_applies():
    x, y = _data(n=8)
    model = _small_model("cuda", np.float32)
    opt = optim.SGD(model, lr=0.1)
    step = engine.fused_train_step(model, opt, nn.CrossEntropyLoss(), x, y, 4)
    assert callable(step.run_epoch) and step.trainer.launches_per_step() in (0, 6)
    assert engine.fused_train_step(model, opt, nn.MSELoss(), x, y, 4) is None
    # the float-target heads are the CPU engines' alone: here they train layer by layer
    for loss in (nn.MSELoss(), nn.BCELoss()):
        with pytest.raises(engine.FusedStepUnavailable, match="the cuda engine trains cross entropy on integer labels"):
            engine.build_fused_step(model, opt, loss, x, np.zeros((8, 4)), 4)
    assert engine.fused_train_step(model, opt, nn.CrossEntropyLoss(), x, y + 4, 4) is None  # labels out of range
    with pytest.raises(ValueError, match="batch of 5 rows, expected 1..4"):
        step(x[:5].astype(np.float32), y[:5])


def test_plan_keeps_the_grid_busy():
    """plan_gemm: big tiles while there are enough of them, else 16-square tiles with K split
    into pieces of at least MIN_SPLIT_K."""
    assert cuda_train.plan_gemm(785, 256, 64, 264) == (32, 1)  # MNIST's first weight gradient
    assert cuda_train.plan_gemm(64, 256, 784, 264, block_side=8) == (8, 1)  # 8 x 8-thread blocks
    assert cuda_train.plan_gemm(64, 256, 784, 264) == (16, 4)  # its first forward layer
    assert cuda_train.plan_gemm(4096, 4096, 4096, 264) == (64, 1)
    assert cuda_train.plan_gemm(8, 8, 40, 264) == (16, 1)  # K too short to split
