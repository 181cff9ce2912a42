"""Figures from the source material, written as PNG files (needs ``pip install nnkern[plot]``).

* :func:`plot_history` -- train/test loss and accuracy against the epoch, from a ``History``;
* :func:`plot_gradient_descent` -- gradient descent on ``x0**2 + x1**2`` from (-3, 4) with a
  good, a too-large and a too-small learning rate;
* :func:`plot_optimizer_paths` -- SGD, momentum, Adagrad, RMSprop, Adadelta and Adam on the
  contours of ``x**2 / 20 + y**2``;
* :func:`plot_graph` -- the nodes and edges of a model (a Graph or a Sequential), each node
  with its layer and output shape (:func:`graph_layout` places them).

The paths are computed by nnkern's own optimizer kernels (:mod:`nnkern.ops`, numpy backend)
on two-element parameter arrays, and returned so that they can be checked; computing them
(:func:`gradient_descent_path`, :func:`optimizer_paths`) does not need matplotlib.
Figures are drawn on matplotlib's Agg canvas without touching pyplot's global state.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

import numpy as np

from . import ops
from ._graph import width_str
from .layers import MergeLayer

__all__ = [
    "plot_history",
    "gradient_descent_path",
    "plot_gradient_descent",
    "optimizer_paths",
    "plot_optimizer_paths",
    "GD_START",
    "GD_LEARNING_RATES",
    "OPTIMIZER_START",
    "OPTIMIZER_LEARNING_RATES",
    "graph_layout",
    "plot_graph",
]

# The source material's gradient-descent demonstration: f(x0, x1) = x0^2 + x1^2 from (-3, 4).
GD_START = (-3.0, 4.0)
# The update multiplies each coordinate by (1 - 2 lr): 0.8 converges, -1.1 swings from side
# to side with a growing amplitude, 0.998 hardly moves.
GD_LEARNING_RATES = {"good": 0.1, "too large": 1.05, "too small": 0.001}

# The source material's optimizer comparison: f(x, y) = x^2 / 20 + y^2 from (-7, 2).
OPTIMIZER_START = (-7.0, 2.0)
# Learning rates that show each method's character on this surface in 30 steps (the
# source's for SGD, momentum, Adagrad and Adam; Adadelta has no real learning rate, its
# lr only scales the step it derives).
OPTIMIZER_LEARNING_RATES = {
    "SGD": 0.95,
    "Momentum": 0.1,
    "AdaGrad": 1.5,
    "RMSprop": 0.1,
    "Adadelta": 50.0,
    "Adam": 0.3,
}


def _bowl(p):
    return p[0] ** 2 + p[1] ** 2


def _bowl_grad(p):
    return 2.0 * p


def _elongated_bowl(p):
    return p[0] ** 2 / 20.0 + p[1] ** 2


def _elongated_bowl_grad(p):
    return np.array([p[0] / 10.0, 2.0 * p[1]])


def _matplotlib_figure(**kwargs):
    """A matplotlib Figure on the Agg canvas, or ImportError saying how to get matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "nnkern.plots needs matplotlib; install it with: pip install nnkern[plot]"
        ) from exc
    return Figure(**kwargs)


def _save(fig, path) -> str:
    path = os.fspath(path)
    fig.savefig(path, format="png", dpi=100)
    return path


def plot_history(history, path, *, title: str | None = None, validation_label: str = "test") -> str:
    """Train/test loss and accuracy against the epoch, as a PNG at ``path``.

    ``history`` is a ``History`` returned by ``model.fit`` or its ``.history`` dict, with
    lists under "loss", "accuracy" and, when validation data was given, "val_loss" and
    "val_accuracy" (drawn as ``validation_label``). Returns the path written.
    """
    curves = history.history if hasattr(history, "history") else history
    if not isinstance(curves, Mapping) or not curves.get("loss"):
        raise ValueError("plot_history: the history holds no 'loss' values (was the model trained?)")
    fig = _matplotlib_figure(figsize=(10, 4))
    epochs = np.arange(1, len(curves["loss"]) + 1)
    for ax, metric in zip(fig.subplots(1, 2), ("loss", "accuracy")):
        for key, name, style in ((metric, "train", "o-"), (f"val_{metric}", validation_label, "s--")):
            values = curves.get(key)
            if values:
                ax.plot(epochs[: len(values)], values, style, label=name)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel(metric)
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def gradient_descent_path(grad: Callable, start, lr: float, steps: int) -> np.ndarray:
    """The points visited by plain gradient descent, ``p -= lr * grad(p)`` through
    ``nnkern.ops.sgd_update``: an array of shape (steps + 1, len(start)), start included."""
    p = np.array(start, dtype=np.float64)
    path = [p.copy()]
    for _ in range(steps):
        ops.sgd_update(p, grad(p), lr, backend="numpy")
        path.append(p.copy())
    return np.array(path)


def _contours(ax, f, xlim, ylim, levels):
    xs = np.linspace(*xlim, 200)
    ys = np.linspace(*ylim, 200)
    gx, gy = np.meshgrid(xs, ys)
    ax.contour(gx, gy, f(np.array([gx, gy])), levels=levels, colors="0.75", linewidths=0.8)


def plot_gradient_descent(path, *, learning_rates: Mapping[str, float] = GD_LEARNING_RATES,
                          start=GD_START, steps: int = 20) -> dict[str, np.ndarray]:
    """Gradient descent on ``x0**2 + x1**2`` from ``start``, one panel per learning rate
    (default: a good one, one too large, one too small), as a PNG at ``path``. Returns the
    path arrays by label ("good", "too large", "too small")."""
    paths = {label: gradient_descent_path(_bowl_grad, start, lr, steps)
             for label, lr in learning_rates.items()}
    fig = _matplotlib_figure(figsize=(5 * len(paths), 4.6))
    axes = np.atleast_1d(fig.subplots(1, len(paths)))
    for ax, (label, points) in zip(axes, paths.items()):
        reach = max(5.0, float(np.abs(points).max()) * 1.1)
        _contours(ax, _bowl, (-reach, reach), (-reach, reach), levels=12)
        ax.plot(points[:, 0], points[:, 1], "o-", markersize=3, color="tab:blue")
        ax.plot(0, 0, "+", color="black", markersize=12)
        ax.set_title(f"lr = {learning_rates[label]:g} ({label})")
        ax.set_xlabel("x0")
        ax.set_ylabel("x1")
        ax.set_aspect("equal")
    fig.suptitle(f"gradient descent on x0² + x1² from {tuple(start)}, {steps} steps")
    fig.tight_layout()
    _save(fig, path)
    return paths


def _optimizer_step(name: str, lr: float) -> Callable[[np.ndarray, np.ndarray, int], None]:
    """One in-place update of a parameter array by optimizer ``name``, through the numpy
    backend's kernel, holding that optimizer's state (zeros at the start, as in torch)."""
    state = [np.zeros(2), np.zeros(2)]
    if name == "SGD":
        return lambda p, g, t: ops.sgd_update(p, g, lr, backend="numpy")
    if name == "Momentum":
        return lambda p, g, t: ops.momentum_update(p, g, state[0], lr, 0.9, backend="numpy")
    if name == "AdaGrad":
        return lambda p, g, t: ops.adagrad_update(p, g, state[0], lr, backend="numpy")
    if name == "RMSprop":
        return lambda p, g, t: ops.rmsprop_update(p, g, state[0], lr, backend="numpy")
    if name == "Adadelta":
        return lambda p, g, t: ops.adadelta_update(p, g, state[0], state[1], lr, backend="numpy")
    if name == "Adam":
        return lambda p, g, t: ops.adam_update(p, g, state[0], state[1], t, lr, backend="numpy")
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZER_LEARNING_RATES)}")


def optimizer_paths(*, learning_rates: Mapping[str, float] = OPTIMIZER_LEARNING_RATES,
                    start=OPTIMIZER_START, steps: int = 30) -> dict[str, np.ndarray]:
    """The paths of each optimizer on ``x**2 / 20 + y**2`` from ``start``: for each name in
    ``learning_rates`` an array of shape (steps + 1, 2), start included."""
    paths = {}
    for name, lr in learning_rates.items():
        step = _optimizer_step(name, lr)
        p = np.array(start, dtype=np.float64)
        points = [p.copy()]
        for t in range(1, steps + 1):
            step(p, _elongated_bowl_grad(p), t)
            points.append(p.copy())
        paths[name] = np.array(points)
    return paths


def plot_optimizer_paths(path, *, learning_rates: Mapping[str, float] = OPTIMIZER_LEARNING_RATES,
                         start=OPTIMIZER_START, steps: int = 30) -> dict[str, np.ndarray]:
    """The optimizers' paths on the contours of ``x**2 / 20 + y**2``, one panel each, as a
    PNG at ``path``. Returns the path arrays by optimizer name."""
    paths = optimizer_paths(learning_rates=learning_rates, start=start, steps=steps)
    columns = 3
    rows = -(-len(paths) // columns)
    fig = _matplotlib_figure(figsize=(5 * columns, 3.6 * rows))
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, (name, points) in zip(axes, paths.items()):
        _contours(ax, _elongated_bowl, (-10, 10), (-5, 5), levels=np.geomspace(0.05, 7.0, 10))
        ax.plot(points[:, 0], points[:, 1], "o-", markersize=3, color="tab:red")
        ax.plot(0, 0, "+", color="black", markersize=12)
        ax.set_xlim(-10, 10)
        ax.set_ylim(-5, 5)
        ax.set_title(f"{name} (lr = {learning_rates[name]:g})")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    for ax in axes[len(paths):]:
        ax.set_visible(False)
    fig.suptitle(f"optimizers on x²/20 + y² from {tuple(start)}, {steps} steps")
    fig.tight_layout()
    _save(fig, path)
    return paths


def graph_layout(model) -> dict[str, tuple[float, float]]:
    """Where :func:`plot_graph` draws each node of ``model``: {name: (x, y)}, one row per
    depth (the longest path from an input, so every edge points down), y = -depth, and
    the nodes of a row side by side in topological order, centred on x = 0. An input
    sits in the row just above its first reader, so that a second input joining late
    does not cross the rows between."""
    depth = {}
    for node in model.nodes:  # topological order: the nodes read are placed already
        depth[node.name] = 1 + max((depth[source] for source in node.inputs), default=-1)
    for node in model.nodes:
        for source in node.inputs:
            if source in model.input_names:
                depth[source] = max(depth[source], min(depth[n.name] for n in model.nodes if source in n.inputs) - 1)
    rows: dict[int, list[str]] = {}
    for node in model.nodes:
        rows.setdefault(depth[node.name], []).append(node.name)
    return {name: (i - (len(names) - 1) / 2, -float(level))
            for level, names in rows.items() for i, name in enumerate(names)}


def plot_graph(model, path, *, title: str | None = None) -> str:
    """The graph of ``model`` as a PNG at ``path``: a box per node (name, layer, output
    shape; inputs blue, merges green, outputs yellow) and an arrow per edge, curved where
    it skips rows (a residual connection). Returns the path written. For Graphviz,
    ``model.to_dot()`` gives the same graph in the DOT language."""
    position = graph_layout(model)
    columns = max(sum(1 for p in position.values() if p[1] == y) for _, y in position.values())
    rows = 1 + int(-min(y for _, y in position.values()))
    fig = _matplotlib_figure(figsize=(max(4.0, 2.6 * columns), 0.4 + 0.95 * rows))
    ax = fig.subplots()
    ax.set_axis_off()
    ax.set_xlim(-columns / 2 - 0.1, columns / 2 + 0.1)
    ax.set_ylim(-rows + 0.5, 0.5)
    for node in model.nodes:
        if node.layer is None:
            what, colour = "Input", "#cfe3f6"
        else:
            what = repr(node.layer)
            colour = "#fff3b0" if node.name in model.output_names else (
                "#d3f0d3" if isinstance(node.layer, MergeLayer) else "white")
        ax.text(*position[node.name], f"{node.name}\n{what}\n{width_str(node.features)}", ha="center",
                va="center", fontsize=8, bbox={"boxstyle": "round,pad=0.4", "facecolor": colour, "edgecolor": "0.4"})
    for node in model.nodes:
        x1, y1 = position[node.name]
        for source in node.inputs:
            x0, y0 = position[source]
            # an edge over rows between (a residual connection) curves past the boxes
            # there, away from the middle (a positive rad bends a downward edge left)
            bend = 0.0 if y0 - y1 <= 1 else (-0.45 if x0 + x1 > 0 else 0.45)
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0),
                        arrowprops={"arrowstyle": "-|>", "color": "0.3", "shrinkA": 20, "shrinkB": 20,
                                    "connectionstyle": f"arc3,rad={bend}"})
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)
