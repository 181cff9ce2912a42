"""nnkern.interop against real engines: ONNX models run by onnxruntime against predict /
predict_proba (Sequential and Graph models with every layer, float32 and float64, several
opsets; nnkern.sklearn estimators, and scikit-learn's own MLP as an outside oracle;
skl2onnx.to_onnx on nnkern's estimators), and PyTorch round trips in float64 on the
reference and every fast CPU backend."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nnkern import interop, nn
from nnkern.normalization import BatchNorm1d, LayerNorm

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

DTYPES = [np.float32, np.float64]
# onnxruntime against nnkern: float32 kernels differ by rounding; float64 ones agree to
# round-off except the exact GELU, whose erf onnxruntime computes in float32 only
TOL = {np.dtype(np.float32): 2e-5, np.dtype(np.float64): 1e-12}
GELU_FLOAT64_TOL = 1e-6


def _run(model_proto, feeds):
    session = ort.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _trained_statistics(model, x):
    """Move the running statistics of every BatchNorm1d off their initial values."""
    for _ in range(3):
        model.forward(x * 1.5 + 0.5, training=True)


def _every_layer(backend, dtype, gelu="none"):
    return nn.Sequential(
        nn.Linear(7, 16, seed=0), BatchNorm1d(16), nn.ReLU(),
        nn.Linear(16, 16, seed=1), LayerNorm(16), nn.GELU(gelu),
        nn.Linear(16, 13, seed=2), nn.Sigmoid(), nn.Dropout(0.3),
        nn.Linear(13, 11, seed=3), nn.Tanh(), BatchNorm1d(11, affine=False, momentum=None),
        nn.Linear(11, 9, seed=4), nn.LeakyReLU(0.2), LayerNorm(9, elementwise_affine=False), nn.Identity(),
        nn.Linear(9, 5, seed=5), nn.Softmax(),
        backend=backend, dtype=dtype)


@pytest.mark.parametrize("gelu", ["none", "tanh"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_sequential_with_every_layer(any_backend, dtype, gelu, tmp_path):
    model = _every_layer(any_backend, dtype, gelu)
    x = np.random.default_rng(0).standard_normal((37, 7)).astype(dtype)
    _trained_statistics(model, x)
    path = tmp_path / "model.onnx"
    proto = interop.to_onnx(model, path)
    assert onnx.load(str(path)) == proto
    assert [i.name for i in proto.graph.input] == ["input"] and [o.name for o in proto.graph.output] == ["output"]
    (got,) = _run(proto, {"input": x})
    assert got.dtype == np.dtype(dtype) and got.shape == (37, 5)
    tol = GELU_FLOAT64_TOL if (dtype == np.float64 and gelu == "none") else TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got, model.predict(x), rtol=tol, atol=tol)
    (one,) = _run(proto, {"input": x[:1]})  # the batch dimension is free
    np.testing.assert_allclose(one, got[:1], rtol=tol, atol=tol)


@pytest.mark.parametrize("opset", [interop.MIN_OPSET, 16, 18, 21])
def test_opsets(opset):
    """LayerNorm and a BatchNorm1d without running statistics are composed before opset 17
    (and ReduceMean takes its axes as an input from 18)."""
    model = nn.Sequential(nn.Linear(5, 6, seed=0), LayerNorm(6), BatchNorm1d(6, track_running_stats=False),
                          nn.GELU(), nn.Linear(6, 3, seed=1), backend="numpy", dtype=np.float64)
    proto = interop.to_onnx(model, opset=opset)
    assert proto.opset_import[0].version == opset
    x = np.random.default_rng(1).standard_normal((8, 5))
    np.testing.assert_allclose(_run(proto, {"input": x})[0], model.predict(x), rtol=GELU_FLOAT64_TOL, atol=1e-9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_graph_with_merges_and_two_outputs(any_backend, dtype):
    a, b = nn.Input(6, name="a"), nn.Input(4, name="b")
    h = nn.ReLU()(nn.Linear(6, 8, seed=0)(a, name="fa"))
    r = nn.Tanh()(nn.Linear(8, 8, seed=1)(h))
    s = nn.Add()(h, r, nn.Linear(4, 8, seed=2)(b))
    c = nn.Concatenate()(s, nn.Sigmoid()(nn.Linear(4, 3, seed=3)(b)))
    c = BatchNorm1d(11)(c)
    logits = nn.Linear(11, 5, seed=4)(c, name="logits")
    value = nn.Linear(11, 1, seed=5)(LayerNorm(11)(c), name="value")
    model = nn.Graph([a, b], [logits, value], backend=any_backend, dtype=dtype)
    rng = np.random.default_rng(2)
    xa, xb = rng.standard_normal((10, 6)).astype(dtype), rng.standard_normal((10, 4)).astype(dtype)
    model.forward([xa, xb], training=True)
    proto = interop.to_onnx(model)
    assert [o.name for o in proto.graph.output] == ["logits", "value"]
    got = _run(proto, {"a": xa, "b": xb})
    for g, want in zip(got, model.predict([xa, xb])):
        np.testing.assert_allclose(g, want, rtol=TOL[np.dtype(dtype)], atol=TOL[np.dtype(dtype)])


def test_unsupported_layer_and_arguments_are_refused():
    class Doubler(nn.Layer):
        def forward(self, x, training=False):
            return 2 * x

    model = nn.Sequential(nn.Linear(3, 3), Doubler(), backend="numpy")
    with pytest.raises(TypeError, match=r"to_onnx: no ONNX conversion for the layer Doubler\(\)"):
        interop.to_onnx(model)
    with pytest.raises(TypeError, match=r"to_torch: no torch counterpart for the layer Doubler\(\)"):
        interop.to_torch(model)
    with pytest.raises(TypeError, match="is not a fitted nnkern.sklearn estimator"):
        interop.to_onnx(object())
    with pytest.raises(ValueError, match="opset must be between 13"):
        interop.to_onnx(nn.Sequential(nn.Linear(3, 3), backend="numpy"), opset=9)
    with pytest.raises(TypeError, match="opset must be an integer"):
        interop.to_onnx(nn.Sequential(nn.Linear(3, 3), backend="numpy"), opset="17")


# -- estimators -------------------------------------------------------------------------


def _classification(n_classes, labels, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((120, 6))
    score = x[:, :n_classes] if n_classes > 2 else x[:, :1] - x[:, 4:5]
    index = np.argmax(np.column_stack([score, np.zeros(len(x))]) if n_classes == 2 else score, axis=1)
    return x, np.asarray(labels)[index]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("labels", [[0, 1], [3, 7, 9], ["no", "yes"], ["a", "b", "c", "d"]], ids=repr)
def test_classifier(any_backend, dtype, labels):
    from nnkern.sklearn import MLPClassifier

    x, y = _classification(len(labels), labels)
    clf = MLPClassifier((12, 8), activation="tanh", max_iter=30, random_state=0, backend=any_backend,
                        dtype=dtype).fit(x, y)
    proto = interop.to_onnx(clf)
    assert [o.name for o in proto.graph.output] == ["label", "probabilities"]
    label, proba = _run(proto, {"X": x.astype(dtype)})
    np.testing.assert_array_equal(label, clf.predict(x))
    assert label.dtype == (np.int64 if isinstance(labels[0], int) else object)
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=tol, atol=tol)


@pytest.mark.parametrize("outputs", [1, 3])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_regressor(any_backend, dtype, outputs):
    from nnkern.sklearn import MLPRegressor

    rng = np.random.default_rng(3)
    x = rng.standard_normal((80, 5))
    y = x[:, :outputs] * 2 - x[:, 1:2] if outputs > 1 else x[:, 0] - 2 * x[:, 3]
    reg = MLPRegressor(hidden_layer_sizes=(10,), activation="relu", max_iter=20, random_state=0, backend=any_backend,
                       dtype=dtype).fit(x, y)
    (variable,) = _run(interop.to_onnx(reg), {"X": x.astype(dtype)})
    assert variable.shape == (80, outputs)
    tol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(variable, reg.predict(x).reshape(80, outputs), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("n_classes", [2, 3])
def test_scikit_learns_own_mlp_as_oracle(n_classes):
    """scikit-learn's MLPClassifier has the public attributes to_onnx reads, including a
    binary classifier's single logistic output unit: onnxruntime reproduces its
    predict_proba, and agrees with skl2onnx's conversion of it."""
    from sklearn.neural_network import MLPClassifier as SkMLP
    from skl2onnx import to_onnx as skl_to_onnx

    x, y = _classification(n_classes, list(range(n_classes)))
    sk = SkMLP((9,), max_iter=300, random_state=0).fit(x, y)
    assert sk.out_activation_ == ("logistic" if n_classes == 2 else "softmax")
    label, proba = _run(interop.to_onnx(sk), {"X": x})
    np.testing.assert_array_equal(label, sk.predict(x))
    np.testing.assert_allclose(proba, sk.predict_proba(x), rtol=1e-12, atol=1e-12)
    _, skl_proba = _run(skl_to_onnx(sk, x, options={"zipmap": False}), {"X": x})
    np.testing.assert_allclose(proba, skl_proba, rtol=1e-12, atol=1e-12)


def test_skl2onnx_converts_nnkern_estimators():
    from skl2onnx import to_onnx as skl_to_onnx

    from nnkern.sklearn import MLPClassifier, MLPRegressor

    assert interop.register_skl2onnx(MLPClassifier, MLPRegressor)
    x, y = _classification(3, ["x", "y", "z"])
    clf = MLPClassifier((8,), max_iter=10, random_state=0).fit(x, y)
    x32 = x.astype(np.float32)
    label, proba = _run(skl_to_onnx(clf, x32, options={"zipmap": False}), {"X": x32})
    np.testing.assert_array_equal(label, clf.predict(x))
    np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=2e-5, atol=2e-5)
    label, zipped = _run(skl_to_onnx(clf, x32), {"X": x32})  # skl2onnx's default: a ZipMap of probabilities
    assert zipped[0].keys() == {"x", "y", "z"}
    assert zipped[5]["y"] == pytest.approx(clf.predict_proba(x)[5, 1], rel=1e-5)
    reg = MLPRegressor(hidden_layer_sizes=(8,), max_iter=10, random_state=0, dtype="float64").fit(x, x[:, 0])
    (variable,) = _run(skl_to_onnx(reg, x), {"X": x})  # a float64 input gives a float64 graph
    np.testing.assert_allclose(variable.ravel(), reg.predict(x), rtol=1e-12, atol=1e-12)


def test_nnkern_sklearn_registers_with_skl2onnx_when_skl2onnx_is_imported_later():
    """Importing nnkern.sklearn does not import skl2onnx (~0.8 s, paid by every joblib or
    Dask worker that fits an estimator); importing skl2onnx afterwards registers the
    estimators, so skl2onnx.to_onnx converts them. In a fresh interpreter: this one has
    skl2onnx imported already."""
    pytest.importorskip("skl2onnx")
    script = textwrap.dedent("""
        import sys
        import numpy as np
        import nnkern.sklearn
        assert "skl2onnx" not in sys.modules, "importing nnkern.sklearn imported skl2onnx"
        x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
        clf = nnkern.sklearn.MLPClassifier((6,), max_iter=5, random_state=0).fit(x, x[:, 0] > 0)
        import onnxruntime
        import skl2onnx
        proto = skl2onnx.to_onnx(clf, x, options={"zipmap": False})
        session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        label, proba = session.run(None, {"X": x})
        np.testing.assert_array_equal(label, clf.predict(x))
        np.testing.assert_allclose(proba, clf.predict_proba(x), rtol=2e-5, atol=2e-5)
        print("converted")
    """)
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "converted"


# -- PyTorch ----------------------------------------------------------------------------------


def test_to_torch_and_back(any_backend):
    model = _every_layer(any_backend, np.float64)
    x = np.random.default_rng(4).standard_normal((21, 7))
    _trained_statistics(model, x)
    module = interop.to_torch(model.eval())  # the module takes the model's mode
    assert isinstance(module, torch.nn.Sequential) and not module.training
    assert module[0].weight.shape == (16, 7) and module[0].weight.dtype == torch.float64
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), model.predict(x), rtol=1e-12, atol=1e-14)
    assert int(module[1].num_batches_tracked) == 3
    back = interop.from_torch(module, backend=any_backend)
    assert back.dtype == np.float64 and back.backend == any_backend
    np.testing.assert_array_equal(back.predict(x), model.predict(x))
    for mine, theirs in zip(model.layers, back.layers):
        assert type(mine) is type(theirs)
        if not isinstance(mine, nn.Linear):  # (a Linear's config holds how its weights were first drawn)
            assert mine.config() == theirs.config()
        for (name, a), (_, b) in zip([*mine.named_parameters(), *getattr(mine, "named_buffers", list)()],
                                     [*theirs.named_parameters(), *getattr(theirs, "named_buffers", list)()]):
            np.testing.assert_array_equal(a, b, err_msg=name)


def test_from_torch_trains_like_torch(any_backend):
    """A torch network (nested Sequential, Linear without bias) read by from_torch: the
    same outputs, and the same weights after an SGD step in each."""
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.GELU(approximate="tanh"),
        torch.nn.Sequential(torch.nn.Linear(8, 6, bias=False), torch.nn.LayerNorm(6), torch.nn.LeakyReLU(0.3)),
        torch.nn.Identity(), torch.nn.Linear(6, 3), torch.nn.Softmax(dim=-1)).double()
    model = interop.from_torch(module, backend=any_backend)
    assert [type(layer).__name__ for layer in model.layers] == [
        "Linear", "BatchNorm1d", "GELU", "Linear", "LayerNorm", "LeakyReLU", "Identity", "Linear", "Softmax"]
    x = np.random.default_rng(5).standard_normal((9, 4))
    with torch.no_grad():
        np.testing.assert_allclose(model.predict(x), module.eval()(torch.from_numpy(x)).numpy(), rtol=1e-12,
                                   atol=1e-14)
    out = model.forward(x, training=True)
    grad = np.random.default_rng(6).standard_normal(out.shape)
    model.backward(grad)
    xt = torch.from_numpy(x)
    module.train()(xt).backward(torch.from_numpy(grad))
    leaves = [m for m in module.modules() if not isinstance(m, torch.nn.Sequential)]
    for layer, leaf in zip(model.layers, leaves):
        for (name, g), torch_name in zip(layer.named_gradients(), ("weight", "bias")):
            torch_param = getattr(leaf, torch_name)
            if torch_param is None:  # the Linear without bias: nnkern's zero bias has no torch counterpart
                continue
            expected = torch_param.grad.numpy().T if name == "W" else torch_param.grad.numpy()
            np.testing.assert_allclose(g, expected, rtol=1e-10, atol=1e-12, err_msg=f"{layer!r} {name}")
    np.testing.assert_allclose(model.layers[1].running_var, module[1].running_var.numpy(), rtol=1e-12)


def test_graph_to_torch(any_backend):
    x = nn.Input(5, name="x")
    h = nn.ReLU()(nn.Linear(5, 6, seed=0)(x))
    s = nn.Add()(h, nn.Tanh()(nn.Linear(6, 6, seed=1)(h)))
    c = nn.Concatenate()(s, h)
    model = nn.Graph(x, [nn.Linear(12, 3, seed=2)(c, name="out"), LayerNorm(12)(c, name="norm")],
                     backend=any_backend, dtype=np.float64)
    module = interop.to_torch(model)
    data = np.random.default_rng(7).standard_normal((4, 5))
    with torch.no_grad():
        got = module(torch.from_numpy(data))
    for g, want in zip(got, model.predict(data)):
        np.testing.assert_allclose(g.numpy(), want, rtol=1e-12, atol=1e-14)
    assert "out.weight" in [name.split("layers.")[-1] for name in module.state_dict()]


def test_torch_conversion_errors():
    with pytest.raises(TypeError, match=r"module 1 Conv1d.*no nnkern layer for torch's torch.nn.modules.conv.Conv1d"):
        interop.from_torch(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Conv1d(1, 1, 1)))
    with pytest.raises(ValueError, match="Softmax runs over the features"):
        interop.from_torch(torch.nn.Sequential(torch.nn.Softmax(dim=0)))
    with pytest.raises(ValueError, match=r"normalized_shape \(2, 3\)"):
        interop.from_torch(torch.nn.Sequential(torch.nn.LayerNorm((2, 3))))
    with pytest.raises(TypeError, match="expected a torch.nn.Sequential"):
        interop.from_torch(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="expected an nnkern.nn.Sequential or Graph"):
        interop.to_torch(torch.nn.Linear(2, 2))
    x = nn.Input(2)
    with pytest.raises(ValueError, match=r"node name 'a.b' contains '.'"):
        interop.to_torch(nn.Graph(x, nn.Linear(2, 2)(x, name="a.b"), backend="numpy"))
