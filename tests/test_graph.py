"""nnkern.nn.Graph: building (functional and named), every check before anything runs,
forward passes against NumPy written by hand, gradients against central differences
(float64), fit / evaluate / predict with several inputs and outputs, Sequential as a chain
graph (one fit path, the fused engine for chains only), state, save / load, the summary,
and the merge layers on their own."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkern
from nnkern import engine, nn, optim
from nnkern.grad import assert_gradcheck, numerical_gradient, relative_error
from _tolerance import assert_close
from _backends import FAST_CPU_BACKENDS

DTYPES = [np.float32, np.float64]


# ---------------------------------------------------------------------------------------
# The networks used throughout
# ---------------------------------------------------------------------------------------


def residual_mlp(backend="numpy", dtype=np.float64, features=6, hidden=8, classes=3, seed=0):
    """features -> hidden (ReLU) -> [hidden -> hidden (Tanh)] + skip -> classes."""
    x = nn.Input(features, name="x")
    h = nn.ReLU()(nn.Linear(features, hidden, seed=seed)(x))
    r = nn.Tanh()(nn.Linear(hidden, hidden, seed=seed + 1)(h))
    s = nn.Add()(h, r, name="sum")
    return nn.Graph(x, nn.Linear(hidden, classes, seed=seed + 2)(s, name="logits"), backend=backend, dtype=dtype)


def two_input_net(backend="numpy", dtype=np.float64, seed=0):
    """a (5) -> 4 (GELU); b (3) -> 4 (Sigmoid); concatenate with a itself (13) -> 3."""
    a, b = nn.Input(5, name="a"), nn.Input(3, name="b")
    ha = nn.GELU()(nn.Linear(5, 4, seed=seed)(a))
    hb = nn.Sigmoid()(nn.Linear(3, 4, seed=seed + 1)(b))
    joined = nn.Concatenate()(ha, hb, a)
    return nn.Graph([a, b], nn.Linear(13, 3, seed=seed + 2)(joined), backend=backend, dtype=dtype)


def two_head_net(backend="numpy", dtype=np.float64, seed=0):
    """x (6) -> 7 (ReLU), feeding a 3-class head and a 2-value regression head."""
    x = nn.Input(6, name="x")
    h = nn.ReLU()(nn.Linear(6, 7, seed=seed)(x))
    classes = nn.Linear(7, 3, seed=seed + 1)(h, name="classes")
    values = nn.Linear(7, 2, seed=seed + 2)(h, name="values")
    return nn.Graph(x, [classes, values], backend=backend, dtype=dtype)


def data(n=12, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 6)), "a": rng.standard_normal((n, 5)), "b": rng.standard_normal((n, 3)),
            "labels": rng.integers(0, 3, n), "values": rng.standard_normal((n, 2))}


def numpy_forward(model, inputs: dict):
    """The model's forward pass written out in NumPy (float64) from its nodes and weights."""
    from math import erf, sqrt

    functions = {
        nn.ReLU: lambda v: np.maximum(v, 0), nn.Tanh: np.tanh, nn.Sigmoid: lambda v: 1 / (1 + np.exp(-v)),
        nn.GELU: lambda v: 0.5 * v * (1 + np.vectorize(erf)(v / sqrt(2))), nn.Identity: lambda v: v,
    }
    values = {name: np.asarray(array, np.float64) for name, array in inputs.items()}
    for node in model.nodes:
        if node.layer is None:
            continue
        args = [values[source] for source in node.inputs]
        layer = node.layer
        if isinstance(layer, nn.Linear):
            values[node.name] = args[0] @ np.asarray(layer.W, np.float64) + np.asarray(layer.b, np.float64)
        elif isinstance(layer, nn.Add):
            values[node.name] = sum(args)
        elif isinstance(layer, nn.Concatenate):
            values[node.name] = np.concatenate(args, axis=1)
        else:
            values[node.name] = functions[type(layer)](args[0])
    outputs = [values[name] for name in model.output_names]
    return outputs[0] if len(outputs) == 1 else outputs


# ---------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------


def test_functional_graph_nodes_names_order_and_plan():
    model = residual_mlp()
    assert [node.name for node in model.nodes] == ["x", "linear_0", "relu_0", "linear_1", "tanh_0", "sum", "logits"]
    assert [node.features for node in model.nodes] == [6, 8, 8, 8, 8, 8, 3]
    assert model.nodes[5].inputs == ("relu_0", "tanh_0")
    assert model.input_names == ["x"] and model.output_names == ["logits"] and not model.is_chain
    # both Linear+activation pairs are fused: the two of them, the sum and the logits
    assert len(model._stages) == 4
    assert [name for name, _ in model.named_parameters()] == [
        "linear_0.W", "linear_0.b", "linear_1.W", "linear_1.b", "logits.W", "logits.b"]
    assert all(p.dtype == np.float64 for p in model.parameters())
    assert repr(model) == "Graph(inputs=['x'], outputs=['logits'], nodes=7, backend='numpy', dtype=float64)"


def test_a_linear_read_by_two_nodes_is_not_fused():
    x = nn.Input(4)
    h = nn.Linear(4, 4, seed=0)(x)
    model = nn.Graph(x, nn.Add()(nn.ReLU()(h), h), backend="numpy")
    assert len(model._stages) == 3


def test_from_nodes_in_any_order_equals_the_functional_graph():
    functional = residual_mlp(seed=3)
    layers = {node.name: node.layer for node in functional.nodes}
    named = nn.Graph.from_nodes(
        {"x": 6},
        [("logits", nn.Linear(8, 3), "sum"), ("sum", nn.Add(), ["relu_0", "tanh_0"]),
         ("linear_0", nn.Linear(6, 8), "x"), ("relu_0", nn.ReLU(), "linear_0"),
         ("linear_1", nn.Linear(8, 8), ["relu_0"]), ("tanh_0", nn.Tanh(), "linear_1")],
        "logits", backend="numpy", dtype=np.float64)
    assert [node.name for node in named.nodes] == [node.name for node in functional.nodes]
    named.load_state_dict(functional.state_dict())
    x = data()["x"]
    np.testing.assert_array_equal(named.predict(x), functional.predict(x))
    assert type(layers["sum"]) is type(named.nodes[5].layer)


def test_explicit_names_are_kept_and_automatic_ones_avoid_them():
    x = nn.Input(3)
    a = nn.Linear(3, 3)(x, name="linear_0")
    b = nn.Linear(3, 3)(a)
    model = nn.Graph(x, b, backend="numpy")
    assert [node.name for node in model.nodes] == ["input_0", "linear_0", "linear_1"]


def test_a_chain_graph_is_a_chain_and_a_sequential_is_a_graph():
    x = nn.Input(4)
    chain = nn.Graph(x, nn.Linear(5, 2)(nn.ReLU()(nn.Linear(4, 5)(x))), backend="numpy")
    assert chain.is_chain
    sequential = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2), backend="numpy")
    assert isinstance(sequential, nn.Graph) and sequential.is_chain
    assert [node.name for node in sequential.nodes] == ["input", "0", "1", "2"]
    assert not two_head_net().is_chain and not two_input_net().is_chain


def cycle():
    return nn.Graph.from_nodes({"x": 4}, [("a", nn.Linear(4, 4), ["b"]), ("b", nn.ReLU(), "a"),
                                          ("out", nn.Linear(4, 2), "b")], "out")


def unfed_functional():
    a, b = nn.Input(4, name="a"), nn.Input(3, name="b")
    return nn.Graph(a, nn.Concatenate()(a, b, name="joined"))


def unused_input():
    a, b = nn.Input(4, name="a"), nn.Input(3, name="b")
    return nn.Graph([a, b], nn.Linear(4, 2)(a))


def linear_misfit():
    x = nn.Input(6, name="x")
    h = nn.ReLU()(nn.Linear(6, 8)(x, name="hidden"))
    return nn.Graph(x, nn.Linear(7, 2)(h, name="out"))


def add_misfit():
    x = nn.Input(6, name="x")
    return nn.Graph(x, nn.Add()(x, nn.Linear(6, 5)(x, name="narrow"), name="sum"))


def concatenate_misfit():
    a, b = nn.Input(4, name="a"), nn.Input(3, name="b")
    return nn.Graph([a, b], nn.Linear(8, 2)(nn.Concatenate()(a, b, name="joined"), name="out"))


def shared_layer():
    x = nn.Input(4, name="x")
    layer = nn.Linear(4, 4)
    return nn.Graph(x, layer(layer(x, name="first"), name="second"))


@pytest.mark.parametrize("make, error, pattern", [
    (cycle, ValueError, r"the nodes 'a' -> 'b' -> 'a' form a cycle"),
    (lambda: nn.Graph.from_nodes({"x": 4}, [("a", nn.ReLU(), "a"), ("out", nn.Linear(4, 2), "a")], "out"),
     ValueError, r"the nodes 'a' -> 'a' form a cycle"),
    (unfed_functional, ValueError,
     r"node 'joined' reads input 'b' \(N x 3\), which is not among the model's inputs \['a'\]: it would never be fed"),
    (lambda: nn.Graph.from_nodes({"x": 4}, [("out", nn.Linear(4, 2), "y")], "out"), ValueError,
     r"node 'out' reads 'y', which is neither an input of the model nor a node: it would never be fed"),
    (unused_input, ValueError, r"input 'b' \(N x 3\) reaches no output of the model"),
    (lambda: nn.Graph.from_nodes({"x": 4}, [("out", nn.Linear(4, 2), "x"), ("dead", nn.ReLU(), "x")], "out"),
     ValueError, r"node 'dead' \(N x 4\) reaches no output of the model \(outputs: \['out'\]\)"),
    (linear_misfit, ValueError,
     r"node 'out' Linear\(7, 2\) takes inputs of shape \(N x 7\), but node 'relu_0' outputs \(N x 8\)"),
    (add_misfit, ValueError, r"node 'sum' Add\(\) cannot merge 'x' \(N x 6\), 'narrow' \(N x 5\): "
                             r"Add needs inputs of one width"),
    (concatenate_misfit, ValueError,
     r"node 'out' Linear\(8, 2\) takes inputs of shape \(N x 8\), but node 'joined' outputs \(N x 7\)"),
    (shared_layer, ValueError, r"the layer Linear\(4, 4\) is used by nodes 'first' and 'second'"),
    (lambda: nn.Linear(3, 2)(nn.Input(3), nn.Input(3)), ValueError, r"Linear\(3, 2\) takes one input node, got 2"),
    (lambda: nn.Add()(nn.Input(3)), ValueError, r"Add\(\) merges two or more input nodes, got 1"),
    (lambda: nn.ReLU()(np.zeros((2, 3))), TypeError, r"ReLU\(\) was called on ndarray: layers are called on graph"),
    (lambda: nn.Graph(nn.Linear(3, 2)(nn.Input(3)), nn.Input(3)), TypeError, r"inputs must be nn.Input nodes"),
    (lambda: nn.Graph(nn.Input(3), "out"), TypeError, r"outputs must be nodes"),
    (lambda: nn.Input(0), ValueError, r"Input: features must be a positive integer, got 0"),
    (lambda: nn.Input(3, name=""), TypeError, r"a node name must be a non-empty string"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [(None, nn.ReLU(), "x")], "x"), TypeError,
     r"a node name must be a non-empty string, got None"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [("x", nn.ReLU(), "x")], "x"), ValueError, r"two nodes are named 'x'"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [("h", nn.ReLU(), "x")], "x"), ValueError,
     r"output 'x' is an input"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [("h", nn.ReLU(), "x")], ["h", "h"]), ValueError, r"listed twice"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [("h", nn.ReLU(), "x")], "z"), ValueError,
     r"output 'z' is not a node of the graph"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [("h", "relu", "x")], "h"), TypeError,
     r"node 'h' is str, not an nnkern.nn layer"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [("h", nn.ReLU())], "h"), TypeError, r"a node is \(name, layer, input names\)"),
    (lambda: nn.Graph.from_nodes({"x": 3}, [("h", nn.ReLU(), "x")], "h", dtype=np.int32), ValueError,
     r"dtype must be float32 or float64"),
    (lambda: nn.Sequential(nn.Linear(2, 2), nn.Add()), ValueError, r"layer 1 Add\(\) merges several inputs"),
    (lambda: nn.Sequential(), ValueError, r"needs at least one layer"),
])
def test_every_graph_error_is_raised_when_the_model_is_built(make, error, pattern):
    with pytest.raises(error, match=pattern):
        make()


def test_a_layer_that_fails_to_build_changes_nothing_that_runs():
    """The checks run before any layer is bound: a failed build leaves layers unbound."""
    layer = nn.Linear(7, 2)
    x = nn.Input(6)
    with pytest.raises(ValueError):
        nn.Graph(x, layer(nn.Linear(6, 8)(x)))
    assert layer.backend is None


# ---------------------------------------------------------------------------------------
# Forward passes
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_matches_numpy_written_by_hand(any_backend, dtype):
    d = data(n=9)
    residual = residual_mlp(any_backend, dtype)
    assert_close(residual.predict(d["x"]), numpy_forward(residual, {"x": d["x"].astype(dtype)}), dtype, factor=50)
    # one input given as an array, a list of one array (code for any number of inputs), a dict
    np.testing.assert_array_equal(residual.predict([d["x"]]), residual.predict({"x": d["x"]}))
    np.testing.assert_array_equal(residual.predict(d["x"].tolist()), residual.predict(d["x"]))  # an array-like
    joined = two_input_net(any_backend, dtype)
    inputs = {"a": d["a"].astype(dtype), "b": d["b"].astype(dtype)}
    out = joined.predict([d["a"], d["b"]])
    assert out.dtype == dtype and out.shape == (9, 3)
    assert_close(out, numpy_forward(joined, inputs), dtype, factor=50)
    np.testing.assert_array_equal(joined.predict({"b": d["b"], "a": d["a"]}), out)
    heads = two_head_net(any_backend, dtype)
    classes, values = heads.predict(d["x"], batch_size=4)  # in chunks
    want_classes, want_values = numpy_forward(heads, {"x": d["x"].astype(dtype)})
    assert_close(classes, want_classes, dtype, factor=50)
    assert_close(values, want_values, dtype, factor=50)


def test_predict_of_no_samples_and_predict_classes():
    heads = two_head_net()
    classes, values = heads.predict(np.zeros((0, 6)))
    assert classes.shape == (0, 3) and values.shape == (0, 2)
    x = data()["x"]
    labels, value_classes = heads.predict_classes(x)
    np.testing.assert_array_equal(labels, np.argmax(heads.predict(x)[0], axis=1))
    np.testing.assert_array_equal(value_classes, np.argmax(heads.predict(x)[1], axis=1))
    assert two_input_net().predict([np.zeros((0, 5)), np.zeros((0, 3))]).shape == (0, 3)


@pytest.mark.parametrize("arrays, error, pattern", [
    (lambda d: d["a"], TypeError, r"the model has 2 inputs \['a', 'b'\]: give input arrays as a list"),
    (lambda d: [d["a"]], ValueError, r"2 input arrays expected \(for \['a', 'b'\]\), got 1"),
    (lambda d: {"a": d["a"], "c": d["b"]}, ValueError, r"missing \['b'\], unexpected \['c'\]"),
    (lambda d: [d["a"], d["a"]], ValueError, r"input of shape \(12x5\) does not fit input 'b', which takes "
                                             r"inputs of shape \(N x 3\)"),
    (lambda d: [d["a"], d["b"][:5]], ValueError, r"the inputs have different numbers of samples"),
    (lambda d: [d["a"], d["b"][0]], ValueError, r"Graph input 'b': input must be 2-D"),
    (lambda d: [d["a"], d["b"].astype(complex)], TypeError, r"Graph input 'b': input has dtype complex128"),
])
def test_input_errors_name_the_input_and_shapes(arrays, error, pattern):
    with pytest.raises(error, match=pattern):
        two_input_net().predict(arrays(data()))


# ---------------------------------------------------------------------------------------
# Gradients against central differences (float64)
# ---------------------------------------------------------------------------------------


def test_gradcheck_residual_mlp(any_backend):
    d = data(n=7)
    errors = assert_gradcheck(residual_mlp(any_backend), "cross_entropy", d["x"], d["labels"])
    assert len(errors) == 6


def test_gradcheck_two_inputs_with_concatenate(any_backend):
    d = data(n=7)
    errors = assert_gradcheck(two_input_net(any_backend), "cross_entropy", {"a": d["a"], "b": d["b"]}, d["labels"])
    assert len(errors) == 6


def test_gradcheck_two_outputs_with_their_own_losses_and_weights(any_backend):
    d = data(n=7)
    errors = assert_gradcheck(two_head_net(any_backend), {"values": "mse", "classes": "cross_entropy"},
                              d["x"], [d["labels"], d["values"]], loss_weights=[0.7, 2.5])
    assert len(errors) == 6


def test_gradcheck_a_node_read_twice_by_one_merge_and_an_output_read_inside():
    """Add()(h, h) doubles h's gradient; an output that also feeds another node gets
    the sum of its loss gradient and the gradient coming back from that node."""
    x = nn.Input(4, name="x")
    h = nn.Tanh()(nn.Linear(4, 5, seed=0)(x), name="h")
    doubled = nn.Add()(h, h)
    first = nn.Linear(5, 5, seed=1)(doubled, name="first")
    second = nn.Linear(5, 3, seed=2)(nn.Sigmoid()(first), name="second")
    model = nn.Graph(x, [first, second], backend="numpy", dtype=np.float64)
    d = data(n=6)
    rng = np.random.default_rng(1)
    assert_gradcheck(model, ["mse", "cross_entropy"], rng.standard_normal((6, 4)),
                     [rng.standard_normal((6, 5)), d["labels"][:6]], loss_weights={"first": 0.5, "second": 1.0})


@pytest.mark.parametrize("make, names", [
    (residual_mlp, ["x"]),
    (two_input_net, ["a", "b"]),
])
def test_input_gradients_match_central_differences(any_backend, make, names):
    model = make(any_backend)
    d = data(n=5)
    inputs = [d[name].copy() for name in names]
    loss = nn.CrossEntropyLoss()

    def value(_=None):
        return loss.forward(model.forward(dict(zip(names, inputs))), d["labels"][:5], backend=any_backend)

    value()
    grads = model.backward(loss.backward(), input_grad=True)
    grads = [np.array(grads, copy=True)] if len(names) == 1 else [np.array(g, copy=True) for g in grads]
    for array, grad in zip(inputs, grads):
        assert relative_error(grad, numerical_gradient(value, array)) < 1e-7


@st.composite
def random_graphs(draw):
    """A random DAG of Linear, Tanh, Sigmoid, Add and Concatenate nodes over one or two
    inputs, its sinks the outputs (so every node reaches one), with MSE losses of random
    weights: (model pieces for from_nodes, input widths, output widths, weights)."""
    widths = {f"in{i}": draw(st.integers(2, 4)) for i in range(draw(st.integers(1, 2)))}
    nodes = []
    for i in range(draw(st.integers(2, 6))):
        names = list(widths)
        kind = draw(st.sampled_from(["linear", "tanh", "sigmoid", "add", "concatenate"]))
        first = draw(st.sampled_from(names))
        same_width = [n for n in names if widths[n] == widths[first]]
        if kind == "add" and len(same_width) >= 1:
            sources = [first, draw(st.sampled_from(same_width))]  # may read one node twice
            layer, width = nn.Add(), widths[first]
        elif kind == "concatenate":
            sources = [first, *draw(st.lists(st.sampled_from(names), min_size=1, max_size=2))]
            layer, width = nn.Concatenate(), sum(widths[n] for n in sources)
        elif kind in ("tanh", "sigmoid"):
            sources, width = [first], widths[first]
            layer = nn.Tanh() if kind == "tanh" else nn.Sigmoid()
        else:
            width = draw(st.integers(1, 4))
            sources, layer = [first], nn.Linear(widths[first], width, init=0.7, seed=draw(st.integers(0, 99)))
        nodes.append((f"n{i}", layer, sources))
        widths[f"n{i}"] = width
    read = {source for _, _, sources in nodes for source in sources}
    inputs = {name: widths[name] for name in widths if name.startswith("in") and name in read}
    outputs = [name for name, _, _ in nodes if name not in read]
    weights = [draw(st.sampled_from([0.5, 1.0, 2.0])) for _ in outputs]
    return inputs, nodes, outputs, [widths[name] for name in outputs], weights


@settings(max_examples=25, deadline=None)
@given(graph=random_graphs(), backend=st.sampled_from(["numpy", *FAST_CPU_BACKENDS]), seed=st.integers(0, 2**16))
def test_fuzz_random_graph_gradients_match_central_differences(graph, backend, seed):
    inputs, nodes, outputs, output_widths, weights = graph
    if not inputs:  # every node reads only nodes: impossible, the first reads an input
        raise AssertionError("a random graph without inputs")
    model = nn.Graph.from_nodes(inputs, nodes, outputs, backend=backend, dtype=np.float64)
    rng = np.random.default_rng(seed)
    x = {name: rng.standard_normal((3, width)) for name, width in inputs.items()}
    y = [rng.standard_normal((3, width)) for width in output_widths]
    if model.parameters():
        assert_gradcheck(model, "mse", x, y, loss_weights=weights)
    objective = model._objective("mse", weights)
    arrays = [x[name] for name in model.input_names]

    def value(_=None):
        return objective.forward(model._forward(arrays, training=False), y, backend)

    value()
    grads = model._backward(objective.backward(), input_grad=True)
    grads = grads if isinstance(grads, list) else [grads]
    for array, grad in zip(arrays, grads):
        assert relative_error(np.array(grad), numerical_gradient(value, array)) < 1e-7


# ---------------------------------------------------------------------------------------
# fit, evaluate
# ---------------------------------------------------------------------------------------


class Recorder(nn.Callback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, info):
        self.events.append(("begin", info))

    def on_batch_end(self, epoch, step, steps, logs):
        self.events.append(("batch", sorted(logs)))

    def on_epoch_end(self, epoch, logs):
        self.events.append(("epoch", sorted(logs)))


OPTIMIZERS = [lambda: optim.SGD(0.05), lambda: optim.SGD(0.05, momentum=0.9, weight_decay=1e-3),
              lambda: optim.Adagrad(0.05), lambda: optim.RMSprop(0.01), lambda: optim.Adadelta(),
              lambda: optim.Adam(0.01)]


@pytest.mark.parametrize("make_optimizer", OPTIMIZERS, ids=["sgd", "momentum", "adagrad", "rmsprop", "adadelta", "adam"])
def test_fit_two_inputs_with_every_optimizer_lowers_the_loss(make_optimizer):
    d = data(n=48)
    model = two_input_net()
    x = {"a": d["a"], "b": d["b"]}
    before, _ = model.evaluate(x, d["labels"])
    history = model.fit(x, d["labels"], epochs=8, batch_size=16, optimizer=make_optimizer(), seed=0, verbose=False,
                        validation_data=(x, d["labels"]))
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_loss"][-1] < before
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}


def test_fit_two_outputs_logs_each_output_and_the_weighted_loss(capsys):
    d = data(n=30)
    model = two_head_net()
    recorder = Recorder()
    targets = {"classes": d["labels"], "values": d["values"]}
    history = model.fit(d["x"], targets, epochs=2, batch_size=8, optimizer=optim.Adam(0.01),
                        loss={"classes": "cross_entropy", "values": nn.MSELoss()}, loss_weights={"classes": 1.0, "values": 0.5},
                        validation_data=(d["x"], [d["labels"], d["values"]]), callbacks=[recorder], seed=1)
    keys = ["classes_accuracy", "classes_loss", "loss", "values_loss"]
    assert sorted(history.history) == sorted(keys + [f"val_{k}" for k in keys])
    assert recorder.events[0] == ("begin", {"epochs": 2, "steps": 4, "samples": 30, "validation": True})
    assert recorder.events[1] == ("batch", keys)
    assert "classes_accuracy" in capsys.readouterr().out  # the verbose epoch lines
    # the weighted loss is the sum of the weighted output losses
    curves = history.history
    np.testing.assert_allclose(curves["val_loss"], np.array(curves["val_classes_loss"]) + 0.5 * np.array(curves["val_values_loss"]),
                               rtol=1e-12)
    loss, accuracies = model.evaluate(d["x"], targets)
    assert loss == pytest.approx(curves["val_loss"][-1], rel=1e-12)
    assert set(accuracies) == {"classes", "values"} and accuracies["values"] is None
    assert accuracies["classes"] == pytest.approx(curves["val_classes_accuracy"][-1])


def test_loss_weights_scale_the_gradients():
    d = data(n=8)
    model = two_head_net()
    model.compute_gradients(d["x"], [d["labels"], d["values"]], model._objective(["cross_entropy", "mse"], [1.0, 0.0]))
    only_classes = [np.array(g) for g in model.gradients()]
    model.compute_gradients(d["x"], [d["labels"], d["values"]], model._objective(["cross_entropy", "mse"], [2.0, 0.0]))
    for once, twice in zip(only_classes, model.gradients()):
        np.testing.assert_allclose(twice, 2 * once, rtol=1e-14, atol=1e-16)
    assert not np.any(model.gradients()[-2])  # the values head's weight has no gradient at weight 0


@pytest.mark.parametrize("kwargs, error, pattern", [
    ({"loss": ["mse"]}, ValueError, r"2 losses expected \(for \['classes', 'values'\]\), got 1"),
    ({"loss": {"classes": "mse"}}, ValueError, r"missing \['values'\]"),
    ({"loss_weights": 2.0}, TypeError, r"give loss weights as a list in that order or a dict by name"),
    ({"loss_weights": [1.0, -1.0]}, ValueError, r"loss weight of output 'values' must be a finite number >= 0"),
    ({"loss_weights": [1.0, float("nan")]}, ValueError, r"must be a finite number >= 0"),
])
def test_fit_loss_and_weight_errors(kwargs, error, pattern):
    d = data()
    arguments = {"loss": ["cross_entropy", "mse"], "epochs": 1, "batch_size": 4, "optimizer": optim.SGD(0.1),
                 "verbose": False, **kwargs}
    with pytest.raises(error, match=pattern):
        two_head_net().fit(d["x"], [d["labels"], d["values"]], **arguments)


def test_one_loss_object_for_two_outputs_gets_a_copy_per_output():
    model = two_head_net()
    loss = nn.MSELoss(reduction="half_sum")
    objective = model._objective(loss)
    assert objective.losses[0] is loss and objective.losses[1] is not loss
    assert objective.losses[1].reduction == "half_sum"


def test_a_sequential_and_the_same_chain_as_a_graph_train_alike(any_backend):
    """One fit path: the same weights and batches give the same losses and weights, on
    the fused engine where the backend has one (both are chains) and layer by layer."""
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)), rng.integers(0, 3, 40)

    def as_graph():
        inp = nn.Input(6)
        return nn.Graph(inp, nn.Linear(9, 3, seed=1)(nn.ReLU()(nn.Linear(6, 9, seed=0)(inp))), backend=any_backend)

    for fused in (True, False):
        sequential = nn.Sequential(nn.Linear(6, 9, seed=0), nn.ReLU(), nn.Linear(9, 3, seed=1), backend=any_backend)
        graph = as_graph()
        histories = [model.fit(x, y, epochs=2, batch_size=8, optimizer=optim.Adam(0.01), seed=3, verbose=False,
                               fused=fused, validation_data=(x, y)) for model in (sequential, graph)]
        assert histories[0].history == histories[1].history
        for a, b in zip(sequential.parameters(), graph.parameters()):
            np.testing.assert_array_equal(a, b)


def test_the_fused_engine_takes_chains_only(fast_backend):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 6)), rng.integers(0, 3, 16)
    inp = nn.Input(6)
    chain = nn.Graph(inp, nn.Linear(7, 3)(nn.ReLU()(nn.Linear(6, 7)(inp))), backend=fast_backend)
    opt = optim.SGD(0.1)
    opt.bind(chain.parameters(), chain.gradients(), backend=fast_backend)
    assert engine.fused_train_step(chain, opt, nn.CrossEntropyLoss(), x, y, 8) is not None
    # two heads: in topological order Linear, ReLU, Linear, Linear, which is no chain
    heads = two_head_net(fast_backend)
    opt = optim.SGD(0.1)
    opt.bind(heads.parameters(), heads.gradients(), backend=fast_backend)
    assert engine.fused_train_step(heads, opt, nn.CrossEntropyLoss(), x, y, 8) is None


def test_workspaces_and_gradient_sums_are_allocated_once_per_batch_size():
    model = residual_mlp()
    d = data(n=32)
    opt = optim.SGD(model, lr=0.01)
    model.train_step(d["x"][:16], d["labels"][:16], opt, "cross_entropy")
    buffers = dict(model._buffers._arrays)
    assert any(key[0].startswith("grad") for key in buffers)  # relu_0's gradient is a sum
    for start in (16, 0):
        model.train_step(d["x"][start:start + 16], d["labels"][start:start + 16], opt, "cross_entropy")
    assert all(model._buffers._arrays[key] is buffers[key] for key in buffers)


# ---------------------------------------------------------------------------------------
# State, files, description
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("make", [residual_mlp, two_input_net, two_head_net])
def test_save_and_load_give_identical_predictions(tmp_path, any_backend, dtype, make):
    model = make(any_backend, dtype, seed=4)
    path = tmp_path / "graph.npz"
    model.save(path)
    loaded = nn.load(path, backend=any_backend)
    assert type(loaded) is nn.Graph and loaded.dtype == dtype and repr(loaded) == repr(model)
    assert loaded.config() == model.config()
    d = data(n=5)
    x = {name: d[name] for name in model.input_names}
    for got, want in zip(*(m.predict(x) if len(m.output_names) > 1 else [m.predict(x)] for m in (loaded, model))):
        np.testing.assert_array_equal(got, want)
    assert os.listdir(tmp_path) == ["graph.npz"]


def test_clone_state_dict_and_its_errors():
    model = residual_mlp(dtype=np.float32)
    copy = model.clone(dtype=np.float64)
    assert copy.dtype == np.float64 and [n.name for n in copy.nodes] == [n.name for n in model.nodes]
    for a, b in zip(copy.parameters(), model.parameters()):
        np.testing.assert_array_equal(a, b.astype(np.float64))
    with pytest.raises(ValueError, match=r"missing keys \['logits.b'\]"):
        copy.load_state_dict({k: v for k, v in model.state_dict().items() if k != "logits.b"})


def test_summary_lists_nodes_shapes_and_parameter_counts():
    text = residual_mlp().summary(print_fn=None)
    lines = text.splitlines()
    assert lines[0].split() == ["node", "layer", "reads", "output", "parameters"]
    assert re.search(r"^sum +Add\(\) +relu_0, tanh_0 +\(N x 8\) +0$", text, re.MULTILINE)
    assert re.search(r"^linear_0 +Linear\(6, 8\) +x +\(N x 8\) +56$", text, re.MULTILINE)
    assert lines[-1] == "Graph: 7 nodes, 155 parameters, outputs logits; backend numpy, float64"
    sequential = nn.Sequential(nn.Linear(784, 100), nn.Sigmoid(), nn.Linear(100, 10), backend="numpy")
    printed = []
    sequential.summary(print_fn=printed.append)
    assert re.search(r"^0 +Linear\(784, 100\) +input +\(N x 100\) +78,500$", printed[0], re.MULTILINE)
    assert printed[0].splitlines()[-1] == "Sequential: 4 nodes, 79,510 parameters, outputs 2; backend numpy, float32"


def test_to_dot_names_every_node_and_edge():
    dot = two_input_net().to_dot()
    assert dot.startswith('digraph "Graph" {') and dot.rstrip().endswith("}")
    assert '"concatenate_0" [label="concatenate_0\\nConcatenate()\\n(N x 13)", fillcolor=' not in dot
    assert '"concatenate_0" [label="concatenate_0\\nConcatenate()\\n(N x 13)"];' in dot
    for source in ("gelu_0", "sigmoid_0", "a"):
        assert f'"{source}" -> "concatenate_0";' in dot
    assert '"a" [label="a\\nInput\\n(N x 5)", fillcolor=lightblue];' in dot


# ---------------------------------------------------------------------------------------
# Merge layers on their own
# ---------------------------------------------------------------------------------------


def test_merge_layers_on_their_own(any_backend):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 3)), rng.standard_normal((4, 2))
    with nnkern.use_backend(any_backend):
        add = nn.Add()
        np.testing.assert_allclose(add.forward([a, a[:, ::-1], a]), 2 * a + a[:, ::-1], rtol=1e-15)
        grads = add.backward(np.ones((4, 3)))
        assert len(grads) == 3 and all(g is grads[0] for g in grads)
        concatenate = nn.Concatenate()
        np.testing.assert_array_equal(concatenate.forward([a, b]), np.hstack([a, b]))
        da, db = concatenate.backward(np.arange(20.0).reshape(4, 5))
        np.testing.assert_array_equal(da, np.arange(20.0).reshape(4, 5)[:, :3])
        np.testing.assert_array_equal(db, np.arange(20.0).reshape(4, 5)[:, 3:])
        with pytest.raises(ValueError, match=r"Add: cannot add inputs of shapes \(4x3\), \(4x2\)"):
            nn.Add().forward([a, b])
        with pytest.raises(ValueError, match=r"Concatenate: inputs have different numbers of rows, shapes \(4x3\), \(3x2\)"):
            nn.Concatenate().forward([a, b[:3]])
        with pytest.raises(TypeError, match=r"Add.forward takes a list of two or more arrays"):
            nn.Add().forward(a)


def test_backward_checks_and_converts_the_gradients_it_is_given():
    model = two_head_net(dtype=np.float32)
    d = data(n=4)
    with pytest.raises(ValueError, match=r"gradient of output 'classes' has shape \(4x3\); no forward pass ran"):
        model.backward([np.ones((4, 3)), np.ones((4, 2))])
    model.forward(d["x"], training=True)
    with pytest.raises(ValueError, match=r"gradient of output 'values' has shape \(5x2\); the last forward pass "
                                         r"gave \(4 x 2\)"):
        model.backward([np.ones((4, 3)), np.ones((5, 2))])
    model.backward({"classes": np.ones((4, 3)), "values": np.ones((4, 2), dtype=np.float64)[:, ::1]})
    reference = two_head_net(dtype=np.float64)
    reference.forward(d["x"], training=True)
    reference.backward([np.ones((4, 3)), np.ones((4, 2))])
    for ours, theirs in zip(model.gradients(), reference.gradients()):
        assert ours.dtype == np.float32
        assert_close(ours, theirs, np.float32, factor=10)
