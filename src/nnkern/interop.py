"""Take a trained model elsewhere: ONNX export and PyTorch conversion, both ways::

    from nnkern import interop
    onnx_model = interop.to_onnx(model, "model.onnx")      # Sequential, Graph or nnkern.sklearn estimator
    torch_model = interop.to_torch(model)                   # torch.nn.Sequential / torch.nn.Module
    model = interop.from_torch(torch_model, backend="cython", dtype="float64")

ONNX (``pip install nnkern[onnx]``): :func:`to_onnx` writes the model's inference
graph (evaluation mode: Dropout is the identity, BatchNorm1d uses its running
statistics) with the weights as initializers in the model's dtype, float32 or float64.
A Sequential's input is named "input" and its output "output"; a Graph keeps its input
and output node names. An estimator of :mod:`nnkern.sklearn` gets the outputs
skl2onnx gives scikit-learn's MLP: a classifier "label" (int64 for integer classes,
string otherwise) and "probabilities" (N x classes), a regressor "variable"
(N x outputs). With skl2onnx installed, :func:`register_skl2onnx` (called when
:mod:`nnkern.sklearn` is imported; it registers once skl2onnx is imported) makes
``skl2onnx.to_onnx(estimator, X)`` work too, with its options (``zipmap``).

onnxruntime has no float64 ``Erf``, so the exact GELU of a float64 model evaluates its
erf in float32 (casts around the one node): those outputs agree with nnkern to about
1e-7 instead of round-off. Every other layer is computed in the model's dtype. ONNX
attributes are float32, so constants that matter in float64 are tensors of the model's
dtype: LeakyReLU is composed (Where), and so are the normalisations of a float64 model,
while a float32 model gets the BatchNormalization and LayerNormalization operators.

PyTorch (``pip install nnkern[torch]``): :func:`to_torch` gives a ``torch.nn.Sequential``
for a Sequential model (``Linear`` weights transposed to torch's (out, in) layout) and a
module running the graph for a Graph model, in the model's dtype and in evaluation mode
(``.train()`` switches torch to training mode); :func:`from_torch` reads a
``torch.nn.Sequential``. Parameters and running statistics are copied both ways.

A layer with no counterpart raises TypeError naming it; a setting that cannot be
carried over (a Softmax over another dimension than the features, a LayerNorm over
more than the last one) raises ValueError.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import math
import numbers
import sys
import threading
import warnings

import numpy as np

from . import __version__, _arrays, nn
from ._paths import check_writable
from .normalization import BatchNorm1d, LayerNorm

__all__ = ["to_onnx", "to_torch", "from_torch", "register_skl2onnx", "DEFAULT_OPSET", "MIN_OPSET"]

DEFAULT_OPSET = 17
"""The ONNX opset written when none is asked for: the first with LayerNormalization,
run by every current onnxruntime."""
MIN_OPSET = 13
"""The oldest opset written (Softmax over one axis, Split/ReduceSum taking tensors)."""

# scikit-learn's activation names (and nnkern's additions) as the nnkern layer they stand for
_ESTIMATOR_ACTIVATIONS = {"identity": nn.Identity, "logistic": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
                          "leaky_relu": nn.LeakyReLU, "gelu": nn.GELU}


def _host(a) -> np.ndarray:
    return np.asarray(_arrays.to_host(a))


# ---------------------------------------------------------------------------------------
# ONNX graphs: one set of emitters, two ways of collecting their nodes (a ModelProto of
# our own, or skl2onnx's container when it converts an estimator inside its topology)
# ---------------------------------------------------------------------------------------


class _OnnxGraph:
    """Nodes and initializers for :func:`onnx.helper.make_graph`, with unique names."""

    def __init__(self, dtype, opset: int, reserved=()):
        from onnx import helper

        self.helper, self.dtype, self.opset = helper, np.dtype(dtype), opset
        self.tensor_type = helper.np_dtype_to_tensor_dtype(self.dtype)
        self.nodes, self.initializers = [], []
        self._taken = set(reserved)

    def name(self, hint: str) -> str:
        name, k = hint, 0
        while name in self._taken:
            k += 1
            name = f"{hint}_{k}"
        self._taken.add(name)
        return name

    def constant(self, hint: str, array) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op_type: str, inputs, output: str, *, domain: str = "", **attrs) -> str:
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], name=self.name(f"{op_type}_{output}"),
                                                domain=domain, **attrs))
        return output


class _Skl2onnxGraph:
    """The same interface on skl2onnx's scope and container."""

    def __init__(self, scope, container, dtype):
        from onnx import helper

        self.scope, self.container, self.dtype = scope, container, np.dtype(dtype)
        self.opset = container.target_opset
        self.tensor_type = helper.np_dtype_to_tensor_dtype(self.dtype)

    def name(self, hint: str) -> str:
        return self.scope.get_unique_variable_name(hint)

    def constant(self, hint: str, array) -> str:
        from onnx import TensorProto, helper

        array = np.ascontiguousarray(array)
        name = self.name(hint)
        if array.dtype.kind == "U":  # class labels
            tensor_type, values = TensorProto.STRING, [s.encode() for s in array.ravel()]
        else:
            tensor_type, values = helper.np_dtype_to_tensor_dtype(array.dtype), array.ravel()
        self.container.add_initializer(name, tensor_type, list(array.shape), values)
        return name

    def node(self, op_type: str, inputs, output: str, *, domain: str = "", **attrs) -> str:
        self.container.add_node(op_type, list(inputs), [output], op_domain=domain,
                                name=self.scope.get_unique_operator_name(op_type), **attrs)
        return output


# -- emitters: each writes the nodes of one step, its result named ``out`` ------------------


def _scalar(g, hint: str, value) -> str:
    return g.constant(hint, np.array(value, dtype=g.dtype))


def _reduce_mean(g, x: str, axis: int, out: str) -> str:
    if g.opset >= 18:  # axes became an input in opset 18
        return g.node("ReduceMean", [x, g.constant(f"{out}/axes", np.array([axis], dtype=np.int64))], out, keepdims=1)
    return g.node("ReduceMean", [x], out, axes=[axis], keepdims=1)


def _normalize(g, x: str, axis: int, eps: float, scale: str | None, shift: str | None, out: str) -> str:
    """(x - mean) / sqrt(var + eps) * scale + shift over ``axis``, var the biased variance:
    the composition for LayerNorm before opset 17 and BatchNorm1d without running statistics."""
    centered = g.node("Sub", [x, _reduce_mean(g, x, axis, g.name(f"{out}/mean"))], g.name(f"{out}/centered"))
    var = _reduce_mean(g, g.node("Mul", [centered, centered], g.name(f"{out}/squared")), axis, g.name(f"{out}/var"))
    std = g.node("Sqrt", [g.node("Add", [var, _scalar(g, f"{out}/eps", eps)], g.name(f"{out}/var_eps"))],
                 g.name(f"{out}/std"))
    if scale is None:
        return g.node("Div", [centered, std], out)
    y = g.node("Mul", [g.node("Div", [centered, std], g.name(f"{out}/normalized")), scale], g.name(f"{out}/scaled"))
    return g.node("Add", [y, shift], out)


def _emit_linear(g, x: str, w, b, out: str, prefix: str) -> str:
    return g.node("Gemm", [x, g.constant(f"{prefix}.W", np.asarray(w, g.dtype)),
                           g.constant(f"{prefix}.b", np.asarray(b, g.dtype))], out)


def _emit_gelu(g, x: str, approximate: str, out: str) -> str:
    from onnx import TensorProto

    half_x = g.node("Mul", [x, _scalar(g, f"{out}/half", 0.5)], g.name(f"{out}/half_x"))
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        cube = g.node("Mul", [x, g.node("Mul", [x, x], g.name(f"{out}/x2"))], g.name(f"{out}/x3"))
        inner = g.node("Add", [x, g.node("Mul", [cube, _scalar(g, f"{out}/c", 0.044715)], g.name(f"{out}/cx3"))],
                       g.name(f"{out}/inner"))
        inner = g.node("Mul", [inner, _scalar(g, f"{out}/k", math.sqrt(2.0 / math.pi))], g.name(f"{out}/scaled"))
        s = g.node("Tanh", [inner], g.name(f"{out}/tanh"))
    else:  # 0.5 x (1 + erf(x / sqrt(2)))
        s = g.node("Mul", [x, _scalar(g, f"{out}/inv_sqrt2", 1.0 / math.sqrt(2.0))], g.name(f"{out}/scaled"))
        if g.dtype == np.float64:  # onnxruntime has no float64 Erf (see the module docstring)
            s = g.node("Cast", [s], g.name(f"{out}/as_float32"), to=TensorProto.FLOAT)
            s = g.node("Cast", [g.node("Erf", [s], g.name(f"{out}/erf32"))], g.name(f"{out}/erf"), to=TensorProto.DOUBLE)
        else:
            s = g.node("Erf", [s], g.name(f"{out}/erf"))
    one_plus = g.node("Add", [s, _scalar(g, f"{out}/one", 1.0)], g.name(f"{out}/one_plus"))
    return g.node("Mul", [half_x, one_plus], out)


def _emit_layer(g, layer, inputs: list[str], out: str, prefix: str) -> str:
    """The nodes of nnkern ``layer`` (evaluation mode) reading ``inputs``; parameters are
    named ``prefix.<name>`` as in the model's state_dict."""
    (x, *_) = inputs
    if isinstance(layer, nn.Linear):
        return _emit_linear(g, x, _host(layer.W), _host(layer.b), out, prefix)
    simple = {nn.Sigmoid: "Sigmoid", nn.Tanh: "Tanh", nn.ReLU: "Relu", nn.Identity: "Identity",
              nn.Dropout: "Identity"}
    if type(layer) in simple:
        return g.node(simple[type(layer)], [x], out)
    if isinstance(layer, nn.LeakyReLU):  # LeakyRelu's alpha attribute is a float32: the slope is a tensor here
        positive = g.node("Greater", [x, _scalar(g, f"{out}/zero", 0.0)], g.name(f"{out}/positive"))
        scaled = g.node("Mul", [x, _scalar(g, f"{out}/slope", layer.negative_slope)], g.name(f"{out}/scaled"))
        return g.node("Where", [positive, x, scaled], out)
    if isinstance(layer, nn.GELU):
        return _emit_gelu(g, x, layer.approximate, out)
    if isinstance(layer, nn.Softmax):
        return g.node("Softmax", [x], out, axis=1)
    if isinstance(layer, nn.Add):
        return g.node("Sum", inputs, out)
    if isinstance(layer, nn.Concatenate):
        return g.node("Concat", inputs, out, axis=1)
    if isinstance(layer, BatchNorm1d):
        scale, shift = _affine_constants(g, layer, layer.num_features, prefix)
        if layer.running_mean is None:  # no running statistics: torch normalises with the batch's, also in eval
            return _normalize(g, x, 0, layer.eps, scale, shift, out)
        mean = g.constant(f"{prefix}.running_mean", _host(layer.running_mean).astype(g.dtype))
        var = g.constant(f"{prefix}.running_var", _host(layer.running_var).astype(g.dtype))
        if g.dtype == np.float64:  # the float32 epsilon attribute would cost float64 models ~1e-13
            std = g.node("Sqrt", [g.node("Add", [var, _scalar(g, f"{out}/eps", layer.eps)], g.name(f"{out}/var_eps"))],
                         g.name(f"{out}/std"))
            centered = g.node("Sub", [x, mean], g.name(f"{out}/centered"))
            y = g.node("Mul", [g.node("Div", [centered, std], g.name(f"{out}/normalized")), scale],
                       g.name(f"{out}/scaled"))
            return g.node("Add", [y, shift], out)
        return g.node("BatchNormalization", [x, scale, shift, mean, var], out, epsilon=layer.eps)
    if isinstance(layer, LayerNorm):
        scale, shift = _affine_constants(g, layer, layer.normalized_shape[0], prefix)
        if g.opset >= 17 and g.dtype == np.float32:
            return g.node("LayerNormalization", [x, scale, shift], out, axis=-1, epsilon=layer.eps)
        return _normalize(g, x, 1, layer.eps, scale, shift, out)
    raise TypeError(f"to_onnx: no ONNX conversion for the layer {layer!r} ({type(layer).__module__}."
                    f"{type(layer).__qualname__})")


def _affine_constants(g, layer, features: int, prefix: str) -> tuple[str, str]:
    """A normalisation layer's scale and shift, ones and zeros when it has none."""
    if layer.weight is None:
        return (g.constant(f"{prefix}.ones", np.ones(features, g.dtype)),
                g.constant(f"{prefix}.zeros", np.zeros(features, g.dtype)))
    return (g.constant(f"{prefix}.weight", _host(layer.weight).astype(g.dtype)),
            g.constant(f"{prefix}.bias", _host(layer.bias).astype(g.dtype)))


# -- estimators -----------------------------------------------------------------------------


def _estimator_kind(estimator) -> str:
    """"classifier" or "regressor" for a fitted nnkern.sklearn estimator; TypeError otherwise."""
    from sklearn.base import is_classifier, is_regressor

    for attribute in ("coefs_", "intercepts_", "out_activation_", "activation"):
        try:
            getattr(estimator, attribute)
        except AttributeError:
            raise TypeError(f"to_onnx: {type(estimator).__name__} is not a fitted nnkern.sklearn estimator "
                            f"(it has no {attribute})") from None
    if is_classifier(estimator):
        return "classifier"
    if is_regressor(estimator):
        return "regressor"
    raise TypeError(f"to_onnx: {type(estimator).__name__} is neither a classifier nor a regressor")


def _estimator_scores(g, estimator, x: str) -> str:
    """The network's output before its output activation, in ``g.dtype``."""
    hidden = _ESTIMATOR_ACTIVATIONS.get(estimator.activation)
    if hidden is None:
        raise ValueError(f"to_onnx: unknown activation {estimator.activation!r} of {type(estimator).__name__}")
    coefs, intercepts = estimator.coefs_, estimator.intercepts_
    for i, (w, b) in enumerate(zip(coefs, intercepts)):
        x = _emit_linear(g, x, np.asarray(w, g.dtype), np.asarray(b, g.dtype), g.name(f"layer{i}/z"), f"coefficient{i}")
        if i < len(coefs) - 1:
            x = _emit_layer(g, hidden(), [x], g.name(f"layer{i}/a"), f"layer{i}")
    return x


def _class_labels(classes) -> np.ndarray:
    """``classes_`` as the label tensor: int64 for integers (and integral floats, booleans),
    str otherwise, as skl2onnx writes scikit-learn's classifiers."""
    classes = np.asarray(classes)
    if classes.dtype.kind in "biu":
        return classes.astype(np.int64)
    if classes.dtype.kind == "f" and np.all(classes == np.round(classes)):
        return classes.astype(np.int64)
    return classes.astype(str)


def _emit_classifier(g, estimator, x: str, label: str, probabilities: str) -> None:
    scores = _estimator_scores(g, estimator, x)
    width = len(estimator.classes_)
    if estimator.out_activation_ == "softmax":
        g.node("Softmax", [scores], probabilities, axis=1)
    elif estimator.out_activation_ == "logistic" and width == 2:  # one unit: the second class's probability
        positive = g.node("Sigmoid", [scores], g.name("positive_probability"))
        negative = g.node("Sub", [_scalar(g, "one", 1.0), positive], g.name("negative_probability"))
        g.node("Concat", [negative, positive], probabilities, axis=1)
    else:
        raise ValueError(f"to_onnx: a classifier of {width} classes with out_activation_ "
                         f"{estimator.out_activation_!r} (expected 'softmax', or 'logistic' for two classes)")
    index = g.node("ArgMax", [probabilities], g.name("argmax"), axis=1, keepdims=0)
    g.node("Gather", [g.constant("classes", _class_labels(estimator.classes_)), index], label, axis=0)


def _emit_regressor(g, estimator, x: str, variable: str) -> None:
    if estimator.out_activation_ != "identity":
        raise ValueError(f"to_onnx: a regressor with out_activation_ {estimator.out_activation_!r} "
                         "(expected 'identity')")
    g.node("Identity", [_estimator_scores(g, estimator, x)], variable)


# -- to_onnx -----------------------------------------------------------------------------------


def _check_opset(opset) -> int:
    import onnx.defs

    newest = onnx.defs.onnx_opset_version()
    if opset is None:
        return min(DEFAULT_OPSET, newest)
    if isinstance(opset, bool) or not isinstance(opset, numbers.Integral):
        raise TypeError(f"to_onnx: opset must be an integer, got {opset!r}")
    if not MIN_OPSET <= opset <= newest:
        raise ValueError(f"to_onnx: opset must be between {MIN_OPSET} and {newest} (this onnx's newest), got {opset}")
    return int(opset)


def to_onnx(model, path=None, *, opset=None):
    """The ONNX model (``onnx.ModelProto``) of ``model``: an :class:`nnkern.nn.Sequential`
    or :class:`nnkern.nn.Graph`, or a fitted :mod:`nnkern.sklearn` estimator, in its
    evaluation mode; written to ``path`` as well when given. ``opset``: the ONNX opset
    (default :data:`DEFAULT_OPSET`; :data:`MIN_OPSET` at least). The batch dimension is
    free ("N"). Inputs and outputs are described in the module docstring."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError("to_onnx needs the onnx package: pip install nnkern[onnx]") from exc
    from onnx import helper

    opset = _check_opset(opset)
    if isinstance(model, nn.Graph):
        graph, inputs, outputs = _graph_to_onnx(model, opset)
    else:
        graph, inputs, outputs = _estimator_to_onnx(model, opset)
    proto = helper.make_graph(graph.nodes, type(model).__name__, inputs, outputs, initializer=graph.initializers)
    opsets = [helper.make_opsetid("", opset)]
    onnx_model = helper.make_model(proto, opset_imports=opsets, producer_name="nnkern", producer_version=__version__)
    onnx.checker.check_model(onnx_model)
    if path is not None:
        onnx.save_model(onnx_model, check_writable(path, "to_onnx"))
    return onnx_model


def _value_info(g, name: str, width) -> object:
    return g.helper.make_tensor_value_info(name, g.tensor_type, ["N", width])


def _graph_to_onnx(model, opset: int):
    names = {node.name: node.name for node in model.nodes}
    if isinstance(model, nn.Sequential):  # "input" and "output" rather than its node indices
        names[model.nodes[-1].name] = "output"
    g = _OnnxGraph(model.dtype, opset, reserved=names.values())
    for node in model.nodes:
        if node.layer is not None:
            _emit_layer(g, node.layer, [names[source] for source in node.inputs], names[node.name], node.name)
    features = {node.name: node.features for node in model.nodes}
    return (g, [_value_info(g, names[name], features[name]) for name in model.input_names],
            [_value_info(g, names[name], features[name]) for name in model.output_names])


def _estimator_to_onnx(estimator, opset: int):
    from onnx import TensorProto, helper

    kind = _estimator_kind(estimator)
    coefs = estimator.coefs_
    dtype = coefs[0].dtype if coefs[0].dtype in (np.float32, np.float64) else np.float64
    outputs = ("label", "probabilities") if kind == "classifier" else ("variable",)
    g = _OnnxGraph(dtype, opset, reserved=("X", *outputs))
    x = "X"
    if kind == "classifier":
        _emit_classifier(g, estimator, x, *outputs)
        labels = _class_labels(estimator.classes_)
        label_type = TensorProto.STRING if labels.dtype.kind == "U" else helper.np_dtype_to_tensor_dtype(labels.dtype)
        out = [helper.make_tensor_value_info("label", label_type, ["N"]),
               _value_info(g, "probabilities", len(labels))]
    else:
        _emit_regressor(g, estimator, x, "variable")
        out = [_value_info(g, "variable", coefs[-1].shape[1])]
    return g, [_value_info(g, x, coefs[0].shape[0])], out


# -- skl2onnx -----------------------------------------------------------------------------------


def _skl2onnx_converter(scope, operator, container) -> None:
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    estimator = operator.raw_operator
    input_type = operator.inputs[0].type
    g = _Skl2onnxGraph(scope, container, np.float64 if isinstance(input_type, DoubleTensorType) else np.float32)
    x = operator.inputs[0].full_name
    if not isinstance(input_type, (DoubleTensorType, FloatTensorType)):  # integer inputs, say
        x = g.node("Cast", [x], g.name("cast_input"), to=g.tensor_type)
    if _estimator_kind(estimator) == "classifier":
        _emit_classifier(g, estimator, x, operator.outputs[0].full_name, operator.outputs[1].full_name)
    else:
        _emit_regressor(g, estimator, x, operator.outputs[0].full_name)


def _skl2onnx_shapes(operator) -> None:
    from skl2onnx.common.shape_calculator import (
        calculate_linear_classifier_output_shapes,
        calculate_linear_regressor_output_shapes,
    )

    if _estimator_kind(operator.raw_operator) == "classifier":
        calculate_linear_classifier_output_shapes(operator)
    else:
        calculate_linear_regressor_output_shapes(operator)
        operator.outputs[0].type.shape = [None, operator.raw_operator.coefs_[-1].shape[1]]


def register_skl2onnx(MLPClassifier, MLPRegressor) -> bool:  # noqa: N803 (the classes)
    """Register the estimator classes (nnkern.sklearn's, which calls this when it is
    imported) with skl2onnx, so that ``skl2onnx.to_onnx(estimator, X)`` converts them (with
    skl2onnx's classifier options, such as ``options={"zipmap": False}``): at once where
    skl2onnx is imported already, else as soon as it is imported. (Importing skl2onnx takes
    ~0.8 s, which a process that never exports, such as each joblib or Dask worker fitting
    an estimator, should not pay.) Returns False, doing nothing, when skl2onnx is not
    installed."""

    def register():
        from skl2onnx import update_registered_converter

        update_registered_converter(MLPClassifier, "NnkernMLPClassifier", _skl2onnx_shapes, _skl2onnx_converter,
                                    options={"zipmap": [True, False, "columns"], "nocl": [True, False]})
        update_registered_converter(MLPRegressor, "NnkernMLPRegressor", _skl2onnx_shapes, _skl2onnx_converter)

    if "skl2onnx" in sys.modules:
        register()
        return True
    if importlib.util.find_spec("skl2onnx") is None:
        return False
    _call_after_import("skl2onnx", register)
    return True


class _AfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: on the first import of the top-level module ``name`` it has
    the other finders find it, and has its loader call ``callback()`` once the module has
    run (a post-import hook: PEP 369's idea, as wrapt's ``when_imported``)."""

    def __init__(self, name: str, callback):
        self.name, self.callback = name, callback
        self._lock = threading.Lock()

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.name:
            return None
        with self._lock:
            if self not in sys.meta_path:  # another thread's import took the hook
                return None
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        run_module, callback = spec.loader.exec_module, self.callback

        def exec_module(module):
            run_module(module)
            try:
                callback()
            except Exception as exc:  # the user's import of skl2onnx must not fail for nnkern
                warnings.warn(f"nnkern could not register its estimators with {fullname}: {exc!r}",
                              RuntimeWarning, stacklevel=2)

        spec.loader.exec_module = exec_module  # this module's loader alone, all else of it kept
        return spec


def _call_after_import(name: str, callback) -> None:
    """``callback()`` once the top-level module ``name`` is first imported."""
    sys.meta_path.insert(0, _AfterImport(name, callback))


# ---------------------------------------------------------------------------------------
# PyTorch
# ---------------------------------------------------------------------------------------


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ImportError("PyTorch conversion needs torch: pip install nnkern[torch]") from exc
    return torch


def _torch_dtype(torch, dtype):
    return torch.float64 if np.dtype(dtype) == np.float64 else torch.float32


def _tensor(torch, a, dtype):
    return torch.from_numpy(np.array(_host(a), dtype=np.dtype(dtype)))


def _torch_layer(torch, layer, dtype):
    """The torch module computing what nnkern ``layer`` computes, with its parameters."""
    tdt = _torch_dtype(torch, dtype)
    tnn = torch.nn
    if isinstance(layer, nn.Linear):
        module = tnn.Linear(layer.in_features, layer.out_features, dtype=tdt)
        with torch.no_grad():
            module.weight.copy_(_tensor(torch, layer.W, dtype).T)
            module.bias.copy_(_tensor(torch, layer.b, dtype))
        return module
    simple = {nn.Sigmoid: tnn.Sigmoid, nn.Tanh: tnn.Tanh, nn.ReLU: tnn.ReLU, nn.Identity: tnn.Identity}
    if type(layer) in simple:
        return simple[type(layer)]()
    if isinstance(layer, nn.LeakyReLU):
        return tnn.LeakyReLU(layer.negative_slope)
    if isinstance(layer, nn.GELU):
        return tnn.GELU(approximate=layer.approximate)
    if isinstance(layer, nn.Softmax):
        return tnn.Softmax(dim=1)
    if isinstance(layer, nn.Dropout):
        return tnn.Dropout(layer.p)
    if isinstance(layer, BatchNorm1d):
        module = tnn.BatchNorm1d(layer.num_features, eps=layer.eps, momentum=layer.momentum, affine=layer.affine,
                                 track_running_stats=layer.track_running_stats, dtype=tdt)
        with torch.no_grad():
            if layer.affine:
                module.weight.copy_(_tensor(torch, layer.weight, dtype))
                module.bias.copy_(_tensor(torch, layer.bias, dtype))
            if layer.track_running_stats:
                module.running_mean.copy_(_tensor(torch, layer.running_mean, dtype))
                module.running_var.copy_(_tensor(torch, layer.running_var, dtype))
                module.num_batches_tracked.fill_(int(layer.num_batches_tracked))
        return module
    if isinstance(layer, LayerNorm):
        module = tnn.LayerNorm(layer.normalized_shape, eps=layer.eps, elementwise_affine=layer.elementwise_affine,
                               dtype=tdt)
        if layer.elementwise_affine:
            with torch.no_grad():
                module.weight.copy_(_tensor(torch, layer.weight, dtype))
                module.bias.copy_(_tensor(torch, layer.bias, dtype))
        return module
    raise TypeError(f"to_torch: no torch counterpart for the layer {layer!r} ({type(layer).__module__}."
                    f"{type(layer).__qualname__})")


def _graph_module_class(torch):
    class GraphModule(torch.nn.Module):
        """An nnkern Graph in torch: its layers (a ModuleDict by node name) run in the
        graph's topological order; ``forward`` takes the inputs in the order of
        ``input_names`` and returns the output, or a tuple of them in the order of
        ``output_names``. Add sums its inputs, Concatenate joins them along dim 1."""

        def __init__(self, layers: dict, inputs_of: dict, merges: dict, input_names, output_names):
            super().__init__()
            self.layers = torch.nn.ModuleDict(layers)
            self.inputs_of, self.merges = dict(inputs_of), dict(merges)
            self.input_names, self.output_names = list(input_names), list(output_names)

        def forward(self, *inputs):
            if len(inputs) != len(self.input_names):
                raise ValueError(f"GraphModule takes {len(self.input_names)} inputs {self.input_names}, "
                                 f"got {len(inputs)}")
            values = dict(zip(self.input_names, inputs))
            for name, sources in self.inputs_of.items():
                xs = [values[source] for source in sources]
                merge = self.merges.get(name)
                if merge == "add":
                    values[name] = torch.stack(xs).sum(dim=0)
                elif merge == "concatenate":
                    values[name] = torch.cat(xs, dim=1)
                else:
                    values[name] = self.layers[name](xs[0])
            outputs = tuple(values[name] for name in self.output_names)
            return outputs[0] if len(outputs) == 1 else outputs

    return GraphModule


def to_torch(model):
    """A torch module with ``model``'s layers and weights, in its dtype: a
    ``torch.nn.Sequential`` for an :class:`nnkern.nn.Sequential`, a module that runs the
    graph for an :class:`nnkern.nn.Graph` (node names must be valid torch module names,
    without "."). The module is in evaluation mode unless ``model`` is in training mode."""
    torch = _torch()
    if not isinstance(model, nn.Graph):
        raise TypeError(f"to_torch: expected an nnkern.nn.Sequential or Graph, got {type(model).__name__}")
    if isinstance(model, nn.Sequential):
        module = torch.nn.Sequential(*(_torch_layer(torch, layer, model.dtype) for layer in model.layers))
    else:
        layers, inputs_of, merges = {}, {}, {}
        for node in model.nodes:
            if node.layer is None:
                continue
            if "." in node.name:
                raise ValueError(f"to_torch: node name {node.name!r} contains '.', which torch module names cannot")
            inputs_of[node.name] = node.inputs
            if isinstance(node.layer, nn.Add):
                merges[node.name] = "add"
            elif isinstance(node.layer, nn.Concatenate):
                merges[node.name] = "concatenate"
            else:
                layers[node.name] = _torch_layer(torch, node.layer, model.dtype)
        module = _graph_module_class(torch)(layers, inputs_of, merges, model.input_names, model.output_names)
    return module.train(bool(getattr(model, "training", False)))


def _flat_modules(module):
    """The leaf modules of ``module``, a torch.nn.Sequential (nested ones flattened)."""
    import torch

    for child in module.children():
        if isinstance(child, torch.nn.Sequential):
            yield from _flat_modules(child)
        else:
            yield child


def _numpy(tensor, dtype) -> np.ndarray:
    return tensor.detach().cpu().numpy().astype(dtype)


def _nnkern_layer(torch, module, dtype, index: int):
    tnn = torch.nn
    where = f"from_torch: module {index} {module!r}"
    if isinstance(module, tnn.Linear):
        layer = nn.Linear(module.in_features, module.out_features)
        layer.W = _numpy(module.weight, dtype).T.copy()  # bound (copied to the backend) by the model
        layer.b = np.zeros(module.out_features, dtype) if module.bias is None else _numpy(module.bias, dtype)
        return layer
    simple = {tnn.Sigmoid: nn.Sigmoid, tnn.Tanh: nn.Tanh, tnn.ReLU: nn.ReLU, tnn.Identity: nn.Identity}
    if type(module) in simple:
        return simple[type(module)]()
    if isinstance(module, tnn.LeakyReLU):
        return nn.LeakyReLU(module.negative_slope)
    if isinstance(module, tnn.GELU):
        return nn.GELU(module.approximate)
    if isinstance(module, tnn.Softmax):
        if module.dim not in (1, -1):
            raise ValueError(f"{where}: nnkern's Softmax runs over the features (dim 1 or -1), not dim {module.dim}")
        return nn.Softmax()
    if isinstance(module, tnn.Dropout):
        return nn.Dropout(module.p)
    if type(module) is tnn.BatchNorm1d:
        layer = BatchNorm1d(module.num_features, eps=module.eps, momentum=module.momentum, affine=module.affine,
                            track_running_stats=module.track_running_stats)
        if module.affine:
            layer.weight, layer.bias = _numpy(module.weight, dtype), _numpy(module.bias, dtype)
        if module.track_running_stats:
            layer.running_mean = _numpy(module.running_mean, dtype)
            layer.running_var = _numpy(module.running_var, dtype)
            layer.num_batches_tracked[...] = int(module.num_batches_tracked)
        return layer
    if isinstance(module, tnn.LayerNorm):
        if len(module.normalized_shape) != 1:
            raise ValueError(f"{where}: nnkern's LayerNorm normalizes the last dimension of 2-D inputs; "
                             f"normalized_shape {tuple(module.normalized_shape)} has more")
        if module.elementwise_affine and module.bias is None:
            raise ValueError(f"{where}: a LayerNorm without bias (bias=False) has no nnkern counterpart")
        layer = LayerNorm(module.normalized_shape[0], eps=module.eps, elementwise_affine=module.elementwise_affine)
        if module.elementwise_affine:
            layer.weight, layer.bias = _numpy(module.weight, dtype), _numpy(module.bias, dtype)
        return layer
    raise TypeError(f"{where}: no nnkern layer for torch's {type(module).__module__}.{type(module).__qualname__}; "
                    "supported: Linear, ReLU, Sigmoid, Tanh, LeakyReLU, GELU, Softmax, Dropout, Identity, "
                    "BatchNorm1d, LayerNorm")


def from_torch(module, *, backend=None, dtype=None):
    """An :class:`nnkern.nn.Sequential` from a ``torch.nn.Sequential`` of supported
    layers (Linear, ReLU, Sigmoid, Tanh, LeakyReLU, GELU, Softmax over dim 1, Dropout,
    Identity, BatchNorm1d, LayerNorm over the last dimension; nested Sequentials are
    flattened), with its parameters and running statistics, on ``backend`` (None: the
    current one) in ``dtype`` (None: the module's, float32 or float64; float32 for other
    dtypes). A Linear without bias gets a zero bias."""
    torch = _torch()
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"from_torch: expected a torch.nn.Sequential, got {type(module).__name__}")
    if dtype is None:
        tensors = [*module.parameters(), *module.buffers()]
        floats = [t.dtype for t in tensors if t.is_floating_point()]
        dtype = np.float64 if floats and floats[0] == torch.float64 else np.float32
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"from_torch: dtype must be float32 or float64, got {dtype}")
    layers = [_nnkern_layer(torch, child, dtype, i) for i, child in enumerate(_flat_modules(module))]
    if not layers:
        raise ValueError("from_torch: the torch.nn.Sequential has no layers")
    return nn.Sequential(*layers, backend=backend, dtype=dtype)
