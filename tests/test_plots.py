"""nnkern.plots: the figures are real PNGs, and the paths come out of the optimizer kernels
behaving as the source material describes."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from nnkern import ops, plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5000  # axes, curves and labels, not an empty canvas


def test_history_curves_png(tmp_path):
    history = {"loss": [0.9, 0.4, 0.3], "accuracy": [0.8, 0.9, 0.93],
               "val_loss": [0.5, 0.35, 0.33], "val_accuracy": [0.86, 0.9, 0.91]}
    out = tmp_path / "curves.png"
    assert plots.plot_history(history, out) == str(out)
    assert_png(out)


def test_history_object_without_validation(tmp_path):
    class History:
        history = {"loss": [0.9, 0.4], "accuracy": [0.8, 0.9]}

    out = tmp_path / "curves.png"
    plots.plot_history(History(), out)
    assert_png(out)


def test_history_without_loss_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no 'loss'"):
        plots.plot_history({"loss": []}, tmp_path / "x.png")


def test_gradient_descent_path_follows_the_closed_form():
    # On x0^2 + x1^2 each step multiplies the point by (1 - 2 lr).
    path = plots.gradient_descent_path(lambda p: 2 * p, (-3.0, 4.0), 0.1, steps=5)
    assert path.shape == (6, 2)
    expected = np.array([-3.0, 4.0]) * (0.8 ** np.arange(6))[:, None]
    np.testing.assert_allclose(path, expected, rtol=1e-12)


def test_gradient_descent_panels(tmp_path):
    out = tmp_path / "gd.png"
    paths = plots.plot_gradient_descent(out, steps=20)
    assert_png(out)
    start = np.array(plots.GD_START)
    norms = {label: np.linalg.norm(points, axis=1) for label, points in paths.items()}
    # good: converges towards the minimum at the origin, monotonically
    assert norms["good"][-1] < 0.02 * norms["good"][0]
    assert np.all(np.diff(norms["good"]) < 0)
    # too large: overshoots to the other side at every step, farther each time
    signs = np.sign(paths["too large"][:, 0])
    assert np.all(signs[1:] == -signs[:-1])
    assert norms["too large"][-1] > 5 * norms["too large"][0]
    # too small: barely leaves the start
    assert np.linalg.norm(paths["too small"][-1] - start) < 0.05 * np.linalg.norm(start)
    assert np.linalg.norm(paths["too small"][-1] - start) > 0


def test_optimizer_paths_come_from_the_kernels(monkeypatch):
    calls = []
    real = ops.adam_update

    def spy(p, g, m, v, t, *args, **kwargs):
        calls.append((t, kwargs.get("backend")))
        return real(p, g, m, v, t, *args, **kwargs)

    monkeypatch.setattr(ops, "adam_update", spy)
    paths = plots.optimizer_paths(learning_rates={"Adam": 0.3}, steps=4)
    assert calls == [(1, "numpy"), (2, "numpy"), (3, "numpy"), (4, "numpy")]
    assert paths["Adam"].shape == (5, 2)


def test_optimizer_paths_head_for_the_minimum(tmp_path):
    out = tmp_path / "optimizers.png"
    paths = plots.plot_optimizer_paths(out)
    assert_png(out)
    assert set(paths) == {"SGD", "Momentum", "AdaGrad", "RMSprop", "Adadelta", "Adam"}

    def f(p):
        return p[..., 0] ** 2 / 20 + p[..., 1] ** 2

    start = f(np.array(plots.OPTIMIZER_START))
    for name, points in paths.items():
        assert points.shape == (31, 2)
        np.testing.assert_array_equal(points[0], plots.OPTIMIZER_START)
        assert f(points[-1]) < 0.5 * start, name
    # Adam's first step has length lr in every coordinate (bias-corrected m/sqrt(v) = sign(g)).
    np.testing.assert_allclose(paths["Adam"][1], np.array(plots.OPTIMIZER_START) + [0.3, -0.3], rtol=1e-6)


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="unknown optimizer 'Nesterov'"):
        plots.optimizer_paths(learning_rates={"Nesterov": 0.1})


def test_missing_matplotlib_says_how_to_install(monkeypatch, tmp_path):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` fail
    with pytest.raises(ImportError, match=r"pip install nnkern\[plot\]"):
        plots.plot_optimizer_paths(tmp_path / "x.png")
    # the paths themselves need no matplotlib
    assert plots.optimizer_paths(steps=2)["SGD"].shape == (3, 2)


def test_graph_layout_rows_by_depth_and_inputs_above_their_first_reader():
    from nnkern import nn

    a, b = nn.Input(5, name="a"), nn.Input(3, name="b")
    h = nn.ReLU()(nn.Linear(5, 4)(a, name="hidden"), name="act")
    joined = nn.Concatenate()(h, b, name="joined")
    model = nn.Graph([a, b], [nn.Linear(7, 2)(joined, name="left"), nn.Linear(7, 1)(joined, name="right")],
                     backend="numpy")
    layout = plots.graph_layout(model)
    assert layout == {"a": (0.0, 0.0), "hidden": (0.0, -1.0), "b": (-0.5, -2.0), "act": (0.5, -2.0),
                      "joined": (0.0, -3.0), "left": (-0.5, -4.0), "right": (0.5, -4.0)}
    for node in model.nodes:  # every edge points down
        assert all(layout[source][1] > layout[node.name][1] for source in node.inputs)


def test_graph_png_of_a_residual_network_and_a_sequential(tmp_path):
    from nnkern import nn

    x = nn.Input(4)
    h = nn.ReLU()(nn.Linear(4, 4)(x))
    model = nn.Graph(x, nn.Linear(4, 2)(nn.Add()(h, nn.ReLU()(nn.Linear(4, 4)(h)))), backend="numpy")
    out = tmp_path / "graph.png"
    assert model.plot(out, title="residual") == str(out)
    assert_png(out)
    sequential = nn.Sequential(nn.Linear(4, 3), nn.Sigmoid(), backend="numpy")
    plots.plot_graph(sequential, tmp_path / "chain.png")
    assert_png(tmp_path / "chain.png")
