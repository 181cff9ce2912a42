"""nnkern.optim against the update equations torch.optim documents (written out here in
NumPy, independently of the kernels), on the reference and every fast CPU backend; binding
(Keras and torch style), state save/restore, and argument errors."""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from nnkern import nn, optim

SHAPES = [(3, 4), (5,), (1,)]
STEPS = 4


def sgd_equations(p, g, state, t, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    g = g + weight_decay * p
    if momentum:
        state["v"] = momentum * state["v"] + g if "v" in state else g.copy()
        g = g + momentum * state["v"] if nesterov else state["v"]
    return p - lr * g


def adagrad_equations(p, g, state, t, lr=0.01, eps=1e-10, weight_decay=0.0):
    g = g + weight_decay * p
    state["h"] = state.get("h", 0.0) + g * g
    return p - lr * g / (np.sqrt(state["h"]) + eps)


def rmsprop_equations(p, g, state, t, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0):
    g = g + weight_decay * p
    state["h"] = alpha * state.get("h", 0.0) + (1 - alpha) * g * g
    return p - lr * g / (np.sqrt(state["h"]) + eps)


def adadelta_equations(p, g, state, t, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0):
    g = g + weight_decay * p
    state["h"] = rho * state.get("h", 0.0) + (1 - rho) * g * g
    delta = np.sqrt(state.get("d", 0.0) + eps) / np.sqrt(state["h"] + eps) * g
    state["d"] = rho * state.get("d", 0.0) + (1 - rho) * delta * delta
    return p - lr * delta


def adam_equations(p, g, state, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    beta1, beta2 = betas
    g = g + weight_decay * p
    state["m"] = beta1 * state.get("m", 0.0) + (1 - beta1) * g
    state["v"] = beta2 * state.get("v", 0.0) + (1 - beta2) * g * g
    m_hat = state["m"] / (1 - beta1**t)
    v_hat = state["v"] / (1 - beta2**t)
    return p - lr * m_hat / (np.sqrt(v_hat) + eps)


def adamw_equations(p, g, state, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
    p = p * (1 - lr * weight_decay)  # decoupled: the decay never enters m and v
    return adam_equations(p, g, state, t, lr, betas, eps)


CASES = {
    "sgd": (optim.SGD, sgd_equations, {"lr": 0.1}),
    "sgd_momentum": (optim.SGD, sgd_equations, {"lr": 0.1, "momentum": 0.9}),
    "sgd_momentum_decay": (optim.SGD, sgd_equations, {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.01}),
    "sgd_nesterov": (optim.SGD, sgd_equations, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    "sgd_nesterov_decay": (optim.SGD, sgd_equations,
                           {"lr": 0.05, "momentum": 0.8, "weight_decay": 0.01, "nesterov": True}),
    "adagrad": (optim.Adagrad, adagrad_equations, {"lr": 0.1}),
    "adagrad_decay": (optim.Adagrad, adagrad_equations, {"lr": 0.1, "eps": 1e-6, "weight_decay": 0.1}),
    "rmsprop": (optim.RMSprop, rmsprop_equations, {"lr": 0.01}),
    "rmsprop_decay": (optim.RMSprop, rmsprop_equations, {"lr": 0.02, "alpha": 0.9, "weight_decay": 0.05}),
    "adadelta": (optim.Adadelta, adadelta_equations, {}),
    "adadelta_decay": (optim.Adadelta, adadelta_equations, {"lr": 0.5, "rho": 0.95, "weight_decay": 0.1}),
    "adam": (optim.Adam, adam_equations, {}),
    "adam_decay": (optim.Adam, adam_equations, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.02}),
    "adamw": (optim.AdamW, adamw_equations, {}),
    "adamw_decay": (optim.AdamW, adamw_equations, {"lr": 0.01, "betas": (0.8, 0.99), "weight_decay": 0.5}),
}

# the equations above in float64 against the kernels: rounding only
TOLERANCE = {np.float64: 1e-12, np.float32: 2e-5}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_steps_follow_the_equations(any_backend, case, dtype):
    cls, equations, hyper = CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    params = [rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
    grads = [np.zeros_like(p) for p in params]
    opt = cls(**hyper)
    opt.bind(params, grads, backend=any_backend)
    expected = [p.astype(np.float64) for p in params]
    states = [{} for _ in params]
    for t in range(1, STEPS + 1):
        for i, g in enumerate(grads):
            g[...] = rng.standard_normal(g.shape)
            expected[i] = equations(expected[i], g.astype(np.float64), states[i], t, **hyper)
        opt.step()
        for p, e in zip(params, expected):
            np.testing.assert_allclose(p, e, rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    assert opt.t == STEPS


def test_weight_decay_leaves_the_decayed_gradient():
    p, g = np.array([1.0, -2.0]), np.array([0.5, 0.5])
    opt = optim.SGD([(p, g)], lr=0.1, weight_decay=0.1)
    opt.step()
    np.testing.assert_allclose(g, [0.6, 0.3], rtol=1e-15)
    np.testing.assert_allclose(p, [0.94, -2.03], rtol=1e-15)


def test_adamw_decays_the_parameter_not_the_gradient():
    p, g = np.array([1.0, -2.0]), np.array([0.0, 0.0])
    opt = optim.AdamW([(p, g)], lr=0.1, weight_decay=0.5)
    opt.step()
    np.testing.assert_allclose(p, [0.95, -1.9], rtol=1e-15)  # zero gradient: only the decay moved p
    np.testing.assert_array_equal(g, [0.0, 0.0])
    assert opt.state[0]["m"].tolist() == [0.0, 0.0]  # the decay never enters the moments


def test_adamw_defaults_are_torchs():
    opt = optim.AdamW()
    assert (opt.lr, opt.betas, opt.eps, opt.weight_decay) == (1e-3, (0.9, 0.999), 1e-8, 0.01)
    assert isinstance(optim.get("adamw"), optim.AdamW) and isinstance(opt, optim.Adam)


def test_first_argument_is_the_rate_or_what_to_bind():
    assert optim.SGD(0.5).lr == 0.5
    assert optim.SGD(lr=0.5).lr == 0.5
    assert optim.Adadelta().lr == 1.0 and optim.Adam().lr == 1e-3 and optim.Adagrad().lr == 0.01
    model = nn.Sequential(nn.Linear(3, 2, seed=0), backend="numpy")
    opt = optim.Adam(model, lr=0.01)
    assert opt.is_bound_to(model.parameters()) and opt.lr == 0.01 and opt.betas == (0.9, 0.999)
    with pytest.raises(TypeError, match="lr given twice"):
        optim.SGD(0.1, lr=0.2)
    with pytest.raises(TypeError, match="parameters alone carry no gradients"):
        optim.SGD(model.parameters(), lr=0.1)


def test_torch_style_loop_on_a_model():
    model = nn.Sequential(nn.Linear(4, 3, seed=0), nn.Tanh(), nn.Linear(3, 2, seed=1), backend="numpy",
                          dtype=np.float64)
    x, y = np.random.default_rng(0).standard_normal((8, 4)), np.arange(8) % 2
    opt = optim.SGD(model, lr=0.5)
    first = model.evaluate(x, y)[0]
    for _ in range(20):
        opt.zero_grad()
        model.compute_gradients(x, y, "cross_entropy")
        opt.step()
    assert model.evaluate(x, y)[0] < first


def test_zero_grad():
    p, g = np.ones(3), np.full(3, 2.0)
    opt = optim.SGD([(p, g)], lr=0.1)
    opt.zero_grad()
    np.testing.assert_array_equal(g, 0.0)


def test_fit_binds_a_keras_style_optimizer():
    model = nn.Sequential(nn.Linear(4, 2, seed=0), backend="numpy")
    opt = optim.RMSprop(0.01)
    assert not opt.is_bound_to(model.parameters())
    with pytest.raises(RuntimeError, match="not bound"):
        opt.step()
    x, y = np.random.default_rng(1).standard_normal((10, 4)), np.arange(10) % 2
    model.fit(x, y, epochs=1, batch_size=5, optimizer=opt, verbose=False)
    assert opt.is_bound_to(model.parameters()) and opt.t == 2
    model.fit(x, y, epochs=1, batch_size=5, optimizer=opt, verbose=False)
    assert opt.t == 4  # the same model: bound once, state kept


def test_optimizer_by_name():
    opt = optim.get("Adam", lr=0.1)
    assert isinstance(opt, optim.Adam) and opt.lr == 0.1
    with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'"):
        optim.get("lbfgs")


def test_changing_the_rate_between_steps():
    p, g = np.zeros(2), np.ones(2)
    opt = optim.SGD([(p, g)], lr=0.1)
    opt.step()
    opt.lr = 0.5
    opt.step()
    np.testing.assert_allclose(p, [-0.6, -0.6], rtol=1e-15)
    with pytest.raises(ValueError, match="lr must be finite and >= 0"):
        opt.lr = -1.0


@pytest.mark.parametrize("case", ["sgd_momentum", "sgd_nesterov_decay", "adagrad", "rmsprop", "adadelta", "adam_decay",
                                  "adamw_decay"])
def test_state_dict_resumes_training_exactly(case):
    cls, _, hyper = CASES[case]
    rng = np.random.default_rng(3)
    start = [rng.standard_normal(shape) for shape in SHAPES]
    grad_steps = [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(5)]

    def run(opt, params, grads, steps):
        for step_grads in steps:
            for g, value in zip(grads, step_grads):
                g[...] = value
            opt.step()

    params, grads = [p.copy() for p in start], [np.zeros_like(p) for p in start]
    uninterrupted = cls(list(zip(params, grads)), **hyper)
    run(uninterrupted, params, grads, grad_steps)

    first_params, first_grads = [p.copy() for p in start], [np.zeros_like(p) for p in start]
    first = cls(list(zip(first_params, first_grads)), **hyper)
    run(first, first_params, first_grads, grad_steps[:3])
    saved = first.state_dict()
    resumed = cls(**hyper)
    resumed.load_state_dict(saved)  # before binding: applied when bound
    resumed.bind(first_params, first_grads)
    assert resumed.t == 3
    run(resumed, first_params, first_grads, grad_steps[3:])
    for a, b in zip(params, first_params):
        np.testing.assert_array_equal(a, b)


def test_load_state_dict_errors():
    p, g = np.zeros(3), np.zeros(3)
    adam = optim.Adam([(p, g)])
    with pytest.raises(ValueError, match="of a 'SGD' optimizer"):
        adam.load_state_dict(optim.SGD([(p.copy(), g.copy())], lr=0.1).state_dict())
    other = optim.Adam([(np.zeros(4), np.zeros(4))]).state_dict()
    with pytest.raises(ValueError, match=r"m of parameter 0 has shape \(4,\), expected \(3,\)"):
        adam.load_state_dict(other)


def test_nesterov_is_part_of_the_saved_state():
    p, g = np.zeros(3), np.zeros(3)
    nesterov = optim.SGD([(p, g)], lr=0.1, momentum=0.9, nesterov=True)
    assert nesterov.state_dict()["nesterov"] is True
    with pytest.raises(ValueError, match="the state is of an SGD with nesterov=True, this one has nesterov=False"):
        optim.SGD(0.1, momentum=0.9).load_state_dict(nesterov.state_dict())
    with pytest.raises(ValueError, match="the state is of an SGD with nesterov=False, this one has nesterov=True"):
        nesterov.load_state_dict(optim.SGD([(p.copy(), g.copy())], lr=0.1, momentum=0.9).state_dict())


def test_nesterov_is_fixed_at_construction():
    opt = optim.SGD(0.1, momentum=0.9, nesterov=True)
    assert opt.nesterov and not optim.SGD(0.1, momentum=0.9).nesterov
    assert repr(opt) == "SGD(lr=0.1, momentum=0.9, weight_decay=0.0, nesterov=True)"
    assert repr(optim.SGD(0.1)) == "SGD(lr=0.1, momentum=0.0, weight_decay=0.0)"
    with pytest.raises(AttributeError):
        opt.nesterov = False
    with pytest.raises(ValueError, match="momentum cannot be switched on or off"):
        opt.momentum = 0.0
    assert optim.get("sgd", lr=0.1, momentum=0.5, nesterov=True).nesterov


@pytest.mark.parametrize("make, message", [
    (lambda: optim.SGD(-0.1), "lr must be finite and >= 0"),
    (lambda: optim.SGD(float("nan")), "lr must be finite"),
    (lambda: optim.SGD(0.1, momentum=-1), "momentum must be finite and >= 0"),
    (lambda: optim.SGD(0.1, nesterov=True), r"nesterov=True needs momentum > 0, got momentum=0.0"),
    (lambda: optim.SGD(0.1, momentum=0, nesterov=True), r"nesterov=True needs momentum > 0, got momentum=0.0"),
    (lambda: optim.SGD(0.1, momentum=-0.5, nesterov=True), "momentum must be finite and >= 0"),
    (lambda: optim.Adam(betas=(1.0, 0.999)), r"beta1 must be in \[0, 1\)"),
    (lambda: optim.Adam(betas=(0.9,)), "betas must be a pair"),
    (lambda: optim.RMSprop(eps=-1e-8), "eps must be finite and >= 0"),
    (lambda: optim.Adagrad(weight_decay=-0.1), "weight_decay must be finite and >= 0"),
])
def test_bad_hyperparameters(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_nesterov_must_be_a_bool():
    with pytest.raises(TypeError, match="SGD: nesterov must be True or False, got 'yes'"):
        optim.SGD(0.1, momentum=0.9, nesterov="yes")


def test_bind_errors():
    with pytest.raises(ValueError, match="2 parameters but 1 gradients"):
        optim.SGD(0.1).bind([np.zeros(2), np.zeros(3)], [np.zeros(2)])
    with pytest.raises(ValueError, match=r"parameter 0 has shape \(2,\) but its gradient \(3,\)"):
        optim.SGD(0.1).bind([np.zeros(2)], [np.zeros(3)])
    with pytest.raises(TypeError, match="parameter 0 has dtype float32 but its gradient float64"):
        optim.SGD(0.1).bind([np.zeros(2, np.float32)], [np.zeros(2)])
    with pytest.raises(ValueError, match="must be C-contiguous"):
        optim.SGD(0.1).bind([np.zeros((4, 4))[:, ::2]], [np.zeros((4, 2))])
