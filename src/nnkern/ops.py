"""Kernel functions on NumPy arrays: the public face of every backend.

(One module on purpose, above the ~700 lines the project aims for: it is the single
validation layer every backend trusts, and its checks share helpers kernel family by
kernel family; split, the boundary would be scattered.)

Each function validates its arguments here, at the Python boundary, then calls the raw
kernel of the chosen backend (``backend=None`` means the current one, see
:func:`nnkern.get_backend`). The raw kernels may then assume what
:mod:`nnkern.backends` documents: C-contiguous float32/float64 arrays of one dtype,
allocated outputs, labels in range. Bad input raises here, with the shapes or values in
the message, before any unchecked compiled code runs:

* ``ValueError`` for wrong shapes and bad values ("matmul: cannot multiply (4x10) by (8x5)");
* ``TypeError`` for types NumPy would not turn into real floats (complex, object, strings).

Integer and boolean arrays are converted to float64 and float16 to float32, as NumPy
would; float32 and float64 inputs mixed in one call compute in float64.

The "cuda" backend also accepts device arrays (anything with ``__cuda_array_interface__``);
outputs are then device arrays too.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from . import _validate
from ._backend import backend_module, get_backend
from .backends import ACTIVATIONS, GRAD_NEEDS_OUTPUT, KERNELS

__all__ = [*KERNELS, "ACTIVATION_NAMES"]  # one public function per raw kernel

ACTIVATION_NAMES = ("identity", "sigmoid", "tanh", "relu", "leaky_relu", "gelu", "step")


# ---------------------------------------------------------------------------------------
# Boundary checks
# ---------------------------------------------------------------------------------------


def _is_device_array(x) -> bool:
    # __cuda_ndarray__ marks Numba's device arrays, including the CUDA simulator's, which
    # have no __cuda_array_interface__.
    return not isinstance(x, np.ndarray) and (
        hasattr(x, "__cuda_array_interface__") or bool(getattr(x, "__cuda_ndarray__", False))
    )


def _shape_str(shape) -> str:
    return "x".join(str(int(d)) for d in shape) if len(shape) else "scalar"


def _float_dtype(x, op: str, name: str) -> np.dtype:
    """The float dtype ``x`` computes in, or TypeError when it is not a real number type."""
    dtype = np.dtype(x.dtype)
    if dtype.kind == "f":
        if dtype.itemsize < 4:
            return np.dtype(np.float32)
        if dtype.itemsize > 8:
            raise TypeError(f"{op}: {name} has dtype {dtype}; nnkern computes in float32 or float64")
        return dtype
    if dtype.kind in "biu":
        return np.dtype(np.float64)
    raise TypeError(
        f"{op}: {name} has dtype {dtype}; expected real numbers (float32, float64, or integers)"
    )


def _array(x, op: str, name: str):
    """``x`` as an array with a dtype (device arrays pass through untouched)."""
    if x is None:
        raise TypeError(f"{op}: {name} is None; expected an array")
    if isinstance(x, np.ndarray) or _is_device_array(x):
        return x
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{op}: {name} cannot be made into an array: {exc}") from None
    if arr.dtype.kind in "OUSV":
        raise TypeError(f"{op}: {name} has dtype {arr.dtype}; expected real numbers")
    return arr


def _common_dtype(op: str, **arrays) -> np.dtype:
    dtypes = [_float_dtype(a, op, name) for name, a in arrays.items()]
    return np.dtype(np.result_type(*dtypes))


def _prepare(x, dtype: np.dtype, op: str, name: str):
    """``x`` as a C-contiguous array of ``dtype`` (one copy at most)."""
    if _is_device_array(x):
        if np.dtype(x.dtype) != dtype:
            raise TypeError(f"{op}: device array {name} has dtype {x.dtype}, expected {dtype}")
        return x
    return np.ascontiguousarray(x, dtype=dtype)


def _check_ndim(x, ndim: int, op: str, name: str) -> None:
    if len(x.shape) != ndim:
        raise ValueError(
            f"{op}: {name} must be {ndim}-D, got shape ({_shape_str(x.shape)})"
        )


def _check_nonempty(x, op: str, name: str) -> None:
    if math.prod(x.shape) == 0:
        raise ValueError(f"{op}: {name} is empty (shape ({_shape_str(x.shape)}))")


def _check_out(out, shape, dtype: np.dtype, op: str) -> None:
    if not (isinstance(out, np.ndarray) or _is_device_array(out)):
        raise TypeError(f"{op}: out must be an array, got {type(out).__name__}")
    if tuple(out.shape) != tuple(shape):
        raise ValueError(
            f"{op}: out has shape ({_shape_str(out.shape)}), expected ({_shape_str(shape)})"
        )
    if np.dtype(out.dtype) != dtype:
        raise TypeError(f"{op}: out has dtype {out.dtype}, expected {dtype}")
    if isinstance(out, np.ndarray):
        if not out.flags.writeable:
            raise ValueError(f"{op}: out is read-only")
        if not out.flags.c_contiguous:
            raise ValueError(f"{op}: out must be C-contiguous")


def _output(out, shape, dtype: np.dtype, be, op: str, *inputs):
    """The caller's ``out`` once checked, or a fresh buffer: a device array when any input
    lives on the device."""
    if out is not None:
        _check_out(out, shape, dtype, op)
        return out
    if any(_is_device_array(x) for x in inputs):
        return be.device_empty(tuple(shape), dtype)
    return np.empty(shape, dtype=dtype)


def _backend(backend):
    return backend_module(get_backend() if backend is None else backend)


def _activation_kind(op: str, name: str, params: dict) -> tuple[str, float]:
    """Map a public activation name and its keyword parameters to (kernel kind, slope)."""
    if name not in ACTIVATION_NAMES:
        raise ValueError(f"{op}: unknown activation {name!r}; choose from {', '.join(ACTIVATION_NAMES)}")
    params = dict(params)
    slope = 0.0
    kind = name
    if name == "leaky_relu":
        slope = _validate.real(op, "negative_slope", params.pop("negative_slope", 0.01))
    elif name == "gelu":
        approximate = params.pop("approximate", "none")
        _validate.choice(op, "gelu approximate", approximate, ("none", "tanh"))
        kind = "gelu_tanh" if approximate == "tanh" else "gelu"
    if params:
        raise TypeError(f"{op}: activation {name!r} takes no parameter(s) {sorted(params)}")
    assert kind in ACTIVATIONS
    return kind, slope


# ---------------------------------------------------------------------------------------
# Matrix products
# ---------------------------------------------------------------------------------------


def _matrix_operand(x, trans: bool, dtype, op: str, name: str):
    """A C-contiguous operand and its transpose flag. A transposed view of a C-contiguous
    matrix (F-contiguous) is passed as its base with the flag flipped: no copy."""
    if not _is_device_array(x) and not x.flags.c_contiguous and x.flags.f_contiguous and x.dtype == dtype:
        return x.T, not trans
    return _prepare(x, dtype, op, name), trans


def matmul(a, b, *, trans_a=False, trans_b=False, out=None, backend=None):
    """``op(a) @ op(b)`` for 2-D arrays, where ``op`` transposes when ``trans_*`` is set."""
    op = "matmul"
    be = _backend(backend)
    a, b = _array(a, op, "a"), _array(b, op, "b")
    _check_ndim(a, 2, op, "a")
    _check_ndim(b, 2, op, "b")
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    k2, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if k != k2:
        raise ValueError(f"{op}: cannot multiply ({m}x{k}) by ({k2}x{n})")
    dtype = _common_dtype(op, a=a, b=b)
    out = _output(out, (m, n), dtype, be, op, a, b)
    if m == 0 or n == 0:
        return out
    if k == 0:
        out[...] = 0
        return out
    a, trans_a = _matrix_operand(a, bool(trans_a), dtype, op, "a")
    b, trans_b = _matrix_operand(b, bool(trans_b), dtype, op, "b")
    be.matmul(a, b, trans_a, trans_b, out)
    return out


def linear(x, w, b, activation=None, *, out=None, backend=None, **params):
    """Fused ``act(x @ w + b)`` for x (N, in), w (in, out), b (out,); ``activation`` is a
    name from ``ACTIVATION_NAMES`` or None (identity)."""
    op = "linear"
    be = _backend(backend)
    kind, slope = _activation_kind(op, activation or "identity", params)
    x, w, b = _array(x, op, "x"), _array(w, op, "w"), _array(b, op, "b")
    _check_ndim(x, 2, op, "x")
    _check_ndim(w, 2, op, "w")
    _check_ndim(b, 1, op, "b")
    if x.shape[1] != w.shape[0]:
        raise ValueError(
            f"{op}: cannot multiply ({_shape_str(x.shape)}) by ({_shape_str(w.shape)})"
        )
    if b.shape[0] != w.shape[1]:
        raise ValueError(
            f"{op}: bias has shape ({_shape_str(b.shape)}), expected ({w.shape[1]},) for w of shape ({_shape_str(w.shape)})"
        )
    _check_nonempty(w, op, "w")
    dtype = _common_dtype(op, x=x, w=w, b=b)
    shape = (x.shape[0], w.shape[1])
    out = _output(out, shape, dtype, be, op, x, w, b)
    if x.shape[0] == 0:
        return out
    be.linear(_prepare(x, dtype, op, "x"), _prepare(w, dtype, op, "w"), _prepare(b, dtype, op, "b"),
              kind, slope, out)
    return out


# ---------------------------------------------------------------------------------------
# Activations
# ---------------------------------------------------------------------------------------


def activation(name, x, *, out=None, backend=None, **params):
    """Elementwise activation ``name`` of ``x`` (any shape). Parameters: leaky_relu takes
    ``negative_slope=0.01``; gelu takes ``approximate="none"`` (erf form) or ``"tanh"``."""
    op = f"activation({name!r})"
    be = _backend(backend)
    kind, slope = _activation_kind(op, name, params)
    x = _array(x, op, "x")
    dtype = _common_dtype(op, x=x)
    out = _output(out, x.shape, dtype, be, op, x)
    if out.size == 0:
        return out
    be.activation(kind, _prepare(x, dtype, op, "x"), slope, out)
    return out


def activation_grad(name, x, y, grad_out, *, out=None, backend=None, **params):
    """Gradient of activation ``name`` with respect to its input, given the input ``x``,
    the forward output ``y`` and the gradient ``grad_out`` of the output. sigmoid and tanh
    need only ``y``; the others only ``x`` (the unneeded one may be None). The gradient of
    relu at 0 is taken as 0."""
    op = f"activation_grad({name!r})"
    be = _backend(backend)
    kind, slope = _activation_kind(op, name, params)
    grad_out = _array(grad_out, op, "grad_out")
    needed = "y" if kind in GRAD_NEEDS_OUTPUT else "x"
    given = {"x": x, "y": y}[needed]
    if given is None:
        raise ValueError(f"{op}: needs {needed} ({'the forward output' if needed == 'y' else 'the input'})")
    given = _array(given, op, needed)
    if tuple(given.shape) != tuple(grad_out.shape):
        raise ValueError(
            f"{op}: {needed} has shape ({_shape_str(given.shape)}) but grad_out has shape ({_shape_str(grad_out.shape)})"
        )
    dtype = _common_dtype(op, **{needed: given, "grad_out": grad_out})
    out = _output(out, grad_out.shape, dtype, be, op, given, grad_out)
    if out.size == 0:
        return out
    given = _prepare(given, dtype, op, needed)
    x_arg, y_arg = (None, given) if needed == "y" else (given, None)
    be.activation_grad(kind, x_arg, y_arg, _prepare(grad_out, dtype, op, "grad_out"), slope, out)
    return out


def softmax(x, *, out=None, backend=None):
    """Row softmax of a 2-D array (the row maximum is subtracted first, so any finite
    logits are safe)."""
    op = "softmax"
    be = _backend(backend)
    x = _array(x, op, "x")
    _check_ndim(x, 2, op, "x")
    dtype = _common_dtype(op, x=x)
    out = _output(out, x.shape, dtype, be, op, x)
    if out.size == 0:
        return out
    be.softmax(_prepare(x, dtype, op, "x"), out)
    return out


def bias_grad(dy, *, out=None, backend=None):
    """Column sums of a 2-D gradient: the gradient of a bias added to every row."""
    op = "bias_grad"
    be = _backend(backend)
    dy = _array(dy, op, "dy")
    _check_ndim(dy, 2, op, "dy")
    dtype = _common_dtype(op, dy=dy)
    out = _output(out, (dy.shape[1],), dtype, be, op, dy)
    if out.size == 0:
        return out
    if dy.shape[0] == 0:
        out[...] = 0
        return out
    be.bias_grad(_prepare(dy, dtype, op, "dy"), out)
    return out


# ---------------------------------------------------------------------------------------
# Losses: each returns (mean loss as a Python float, gradient with respect to its input)
# ---------------------------------------------------------------------------------------


def _class_labels(labels, n: int, n_classes: int, op: str):
    """Integer class indices as int64, after checking they are integers in [0, n_classes)."""
    if _is_device_array(labels):
        if np.dtype(labels.dtype) != np.int64:
            raise TypeError(f"{op}: device labels must be int64, got {labels.dtype}")
        if labels.shape[0] != n:
            raise ValueError(f"{op}: logits have {n} rows but labels have {labels.shape[0]} entries")
        return labels  # their range is checked by the cuda kernel, which reads them anyway
    kind = labels.dtype.kind
    if kind == "b" or kind not in "iuf":
        raise TypeError(f"{op}: labels have dtype {labels.dtype}; expected integer class indices")
    if labels.shape[0] != n:
        raise ValueError(f"{op}: logits have {n} rows but labels have {labels.shape[0]} entries")
    if kind == "f":
        bad = ~np.isfinite(labels) | (labels != np.floor(labels))
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"{op}: labels must be integers, got {labels[i].item()!r} at index {i}")
    lo, hi = labels.min(), labels.max()
    if lo < 0 or hi >= n_classes:
        i = int(np.flatnonzero((labels < 0) | (labels >= n_classes))[0])
        raise ValueError(
            f"{op}: label {labels[i].item()} at index {i} is out of range for {n_classes} classes (0..{n_classes - 1})"
        )
    return np.ascontiguousarray(labels, dtype=np.int64)


def softmax_cross_entropy(logits, labels, *, out=None, backend=None):
    """Fused softmax + cross entropy, averaged over the N rows. ``labels`` are integer class
    indices (N,) or target distributions / one-hot rows (N, C). Returns
    ``(mean_loss, dlogits)``; ``out`` may hold a (N, C) buffer for dlogits."""
    op = "softmax_cross_entropy"
    be = _backend(backend)
    logits, labels = _array(logits, op, "logits"), _array(labels, op, "labels")
    _check_ndim(logits, 2, op, "logits")
    _check_nonempty(logits, op, "logits")
    n, c = logits.shape
    if len(labels.shape) == 1:
        dtype = _common_dtype(op, logits=logits)
        labels = _class_labels(labels, n, c, op)
    elif len(labels.shape) == 2:
        if tuple(labels.shape) != (n, c):
            raise ValueError(
                f"{op}: logits have shape ({_shape_str(logits.shape)}) but targets have shape ({_shape_str(labels.shape)})"
            )
        dtype = _common_dtype(op, logits=logits, targets=labels)
        labels = _prepare(labels, dtype, op, "targets")
    else:
        raise ValueError(
            f"{op}: labels must be class indices (N,) or targets (N, C), got shape ({_shape_str(labels.shape)})"
        )
    out = _output(out, (n, c), dtype, be, op, logits, labels)
    loss = be.softmax_cross_entropy(_prepare(logits, dtype, op, "logits"), labels, out)
    return float(loss), out


def _pair(pred, target, op: str, pred_name: str):
    pred, target = _array(pred, op, pred_name), _array(target, op, "target")
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(
            f"{op}: {pred_name} has shape ({_shape_str(pred.shape)}) but target has shape ({_shape_str(target.shape)})"
        )
    _check_nonempty(pred, op, pred_name)
    dtype = _common_dtype(op, **{pred_name: pred, "target": target})
    return pred, target, dtype


def mse(pred, target, *, reduction="mean", out=None, backend=None):
    """Mean squared error and its gradient. ``reduction="mean"`` (PyTorch's MSELoss: the
    mean over all elements) or ``"half_sum"`` (the source material's 0.5 * sum)."""
    op = "mse"
    be = _backend(backend)
    _validate.choice(op, "reduction", reduction, ("mean", "half_sum"))
    pred, target, dtype = _pair(pred, target, op, "pred")
    out = _output(out, pred.shape, dtype, be, op, pred, target)
    loss = be.mse(_prepare(pred, dtype, op, "pred"), _prepare(target, dtype, op, "target"),
                  reduction == "half_sum", out)
    return float(loss), out


def binary_cross_entropy(prob, target, *, out=None, backend=None):
    """Binary cross entropy of probabilities against targets in [0, 1], averaged over all
    elements, with log(p) and log(1 - p) clamped at log(1e-12). Returns (loss, dprob)."""
    op = "binary_cross_entropy"
    be = _backend(backend)
    prob, target, dtype = _pair(prob, target, op, "prob")
    out = _output(out, prob.shape, dtype, be, op, prob, target)
    loss = be.binary_cross_entropy(_prepare(prob, dtype, op, "prob"),
                                   _prepare(target, dtype, op, "target"), out)
    return float(loss), out


# ---------------------------------------------------------------------------------------
# Optimizer updates: in place, one pass over the parameter, its gradient and its state
# ---------------------------------------------------------------------------------------


class _InPlace:
    """The flat, C-contiguous arrays an update kernel works on, and the write-back of any
    argument that had to be copied (non-contiguous views) into the caller's array."""

    def __init__(self, op: str, p, g, **state):
        self.op = op
        self.arrays = {"p": p, "g": g, **state}
        p = self.arrays["p"]
        for name, arr in self.arrays.items():
            if not (isinstance(arr, np.ndarray) or _is_device_array(arr)):
                raise TypeError(f"{op}: {name} must be an array (it is updated in place), got {type(arr).__name__}")
            _float_dtype(arr, op, name)
            if name != "g" and (arr.dtype.kind != "f" or arr.dtype.itemsize not in (4, 8)):
                raise TypeError(f"{op}: {name} has dtype {arr.dtype}; updated arrays must be float32 or float64")
            if tuple(arr.shape) != tuple(p.shape):
                raise ValueError(
                    f"{op}: {name} has shape ({_shape_str(arr.shape)}) but p has shape ({_shape_str(p.shape)})"
                )
            if isinstance(arr, np.ndarray) and name != "g" and not arr.flags.writeable:
                raise ValueError(f"{op}: {name} is read-only")
        self.dtype = np.dtype(p.dtype)
        self.flat = {}
        self.copied = []
        for name, arr in self.arrays.items():
            if _is_device_array(arr):
                if np.dtype(arr.dtype) != self.dtype:
                    raise TypeError(f"{op}: {name} has dtype {arr.dtype} but p has dtype {self.dtype}")
                self.flat[name] = arr.reshape(arr.size) if len(arr.shape) != 1 else arr
                continue
            if name != "g" and arr.dtype != self.dtype:
                raise TypeError(f"{op}: {name} has dtype {arr.dtype} but p has dtype {self.dtype}")
            if arr.flags.c_contiguous and arr.dtype == self.dtype:
                self.flat[name] = arr.reshape(-1)
            else:
                self.flat[name] = np.ascontiguousarray(arr, dtype=self.dtype).reshape(-1)
                if name != "g":
                    self.copied.append(name)

    def write_back(self) -> None:
        for name in self.copied:
            self.arrays[name][...] = self.flat[name].reshape(self.arrays[name].shape)

    def empty(self) -> bool:
        return math.prod(self.arrays["p"].shape) == 0


def _update(op, be, kernel_args, p, g, **state):
    arrays = _InPlace(op, p, g, **state)
    if arrays.empty():
        return
    f = arrays.flat
    getattr(be, op)(*[f[name] for name in ("p", "g", *state)], *kernel_args)
    arrays.write_back()


def sgd_update(p, g, lr, *, backend=None):
    """``p -= lr * g``, in place."""
    op = "sgd_update"
    be = _backend(backend)
    _update(op, be, (_validate.real(op, "lr", lr, low=0),), p, g)


def momentum_update(p, g, v, lr, momentum, *, backend=None):
    """SGD with momentum as torch.optim.SGD: ``v = momentum * v + g; p -= lr * v``
    (v starts at zero, so the first step is ``v = g``)."""
    op = "momentum_update"
    be = _backend(backend)
    args = (_validate.real(op, "lr", lr, low=0), _validate.real(op, "momentum", momentum, low=0))
    _update(op, be, args, p, g, v=v)


def nesterov_update(p, g, v, lr, momentum, *, backend=None):
    """SGD with Nesterov momentum as torch.optim.SGD(nesterov=True):
    ``v = momentum * v + g; p -= lr * (g + momentum * v)`` (v starts at zero). At a
    constant rate these are the steps of scikit-learn's ``nesterovs_momentum``."""
    op = "nesterov_update"
    be = _backend(backend)
    args = (_validate.real(op, "lr", lr, low=0), _validate.real(op, "momentum", momentum, low=0))
    _update(op, be, args, p, g, v=v)


def adagrad_update(p, g, h, lr, eps=1e-10, *, backend=None):
    """Adagrad as torch.optim.Adagrad: ``h += g*g; p -= lr * g / (sqrt(h) + eps)``."""
    op = "adagrad_update"
    be = _backend(backend)
    args = (_validate.real(op, "lr", lr, low=0), _validate.real(op, "eps", eps, low=0))
    _update(op, be, args, p, g, h=h)


def rmsprop_update(p, g, h, lr, alpha=0.99, eps=1e-8, *, backend=None):
    """RMSprop as torch.optim.RMSprop: ``h = alpha*h + (1-alpha)*g*g;
    p -= lr * g / (sqrt(h) + eps)``."""
    op = "rmsprop_update"
    be = _backend(backend)
    args = (_validate.real(op, "lr", lr, low=0), _validate.real(op, "alpha", alpha, low=0),
            _validate.real(op, "eps", eps, low=0))
    _update(op, be, args, p, g, h=h)


def adadelta_update(p, g, h, d, lr=1.0, rho=0.9, eps=1e-6, *, backend=None):
    """Adadelta as torch.optim.Adadelta: ``h = rho*h + (1-rho)*g*g;
    delta = sqrt(d + eps) / sqrt(h + eps) * g; d = rho*d + (1-rho)*delta*delta;
    p -= lr * delta``."""
    op = "adadelta_update"
    be = _backend(backend)
    args = (_validate.real(op, "lr", lr, low=0), _validate.real(op, "rho", rho, low=0),
            _validate.real(op, "eps", eps, low=0))
    _update(op, be, args, p, g, h=h, d=d)


def adam_update(p, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, *, backend=None):
    """Adam as torch.optim.Adam, step ``t`` (1-based): ``m = b1*m + (1-b1)*g;
    v = b2*v + (1-b2)*g*g; p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``."""
    op = "adam_update"
    be = _backend(backend)
    _update(op, be, _adam_scalars(op, t, lr, beta1, beta2, eps), p, g, m=m, v=v)


def _adam_scalars(op, t, lr, beta1, beta2, eps) -> tuple:
    """Adam's and AdamW's validated (t, lr, beta1, beta2, eps)."""
    if isinstance(t, (bool, np.bool_)) or not isinstance(t, numbers.Integral) or t < 1:
        raise ValueError(f"{op}: t is the 1-based step number, got {t!r}")
    return (int(t), _validate.real(op, "lr", lr, low=0),
            _validate.real(op, "beta1", beta1, low=0, high=1, high_open=True),
            _validate.real(op, "beta2", beta2, low=0, high=1, high_open=True),
            _validate.real(op, "eps", eps, low=0))


def adamw_update(p, g, m, v, t, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, *,
                 backend=None):
    """AdamW as torch.optim.AdamW, step ``t`` (1-based): the decoupled weight decay
    ``p *= 1 - lr * weight_decay``, then Adam's step on the plain gradient,
    ``m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g*g;
    p -= lr * (m / (1 - b1**t)) / (sqrt(v / (1 - b2**t)) + eps)``."""
    op = "adamw_update"
    be = _backend(backend)
    args = (*_adam_scalars(op, t, lr, beta1, beta2, eps), _validate.real(op, "weight_decay", weight_decay, low=0))
    _update(op, be, args, p, g, m=m, v=v)


# ---------------------------------------------------------------------------------------
# Normalisation: BatchNorm1d (per column, over the rows) and LayerNorm (per row, over the
# columns) of 2-D inputs, as torch's; the forward returns what its backward needs
# ---------------------------------------------------------------------------------------


def _norm_operands(op: str, x, weight, bias, **others):
    """x as a nonempty 2-D array, and weight and bias as (C,) vectors (None: ones and
    zeros), all in one compute dtype (which ``others`` take part in), ready for a kernel."""
    x = _array(x, op, "x")
    _check_ndim(x, 2, op, "x")
    _check_nonempty(x, op, "x")
    width = x.shape[1]
    vectors = {}
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None:
            v = vectors[name] = _array(v, op, name)
            if tuple(v.shape) != (width,):
                raise ValueError(f"{op}: {name} has shape ({_shape_str(v.shape)}), expected ({width},) "
                                 f"for x of shape ({_shape_str(x.shape)})")
    dtype = _common_dtype(op, x=x, **vectors, **others)
    # absent vectors are host arrays; the cuda backend copies host inputs to the device
    weight = np.ones(width, dtype) if weight is None else _prepare(vectors["weight"], dtype, op, "weight")
    bias = np.zeros(width, dtype) if bias is None else _prepare(vectors["bias"], dtype, op, "bias")
    return _prepare(x, dtype, op, "x"), weight, bias, dtype


def _saved(v, shape, dtype, op: str, name: str):
    """A statistic saved by a forward pass (mean, invstd), checked and prepared."""
    v = _array(v, op, name)
    if tuple(v.shape) != tuple(shape):
        raise ValueError(f"{op}: {name} has shape ({_shape_str(v.shape)}), expected ({_shape_str(shape)})")
    return _prepare(v, dtype, op, name)


def _running(v, width: int, dtype, op: str, name: str):
    """A running statistic, updated in place: an array of the compute dtype and shape
    (width,), writeable. Returns the array the kernel updates: ``v`` itself, or a
    contiguous copy when ``v`` is a strided view (the caller writes it back)."""
    if not (isinstance(v, np.ndarray) or _is_device_array(v)):
        raise TypeError(f"{op}: {name} must be an array (it is updated in place), got {type(v).__name__}")
    if tuple(v.shape) != (width,):
        raise ValueError(f"{op}: {name} has shape ({_shape_str(v.shape)}), expected ({width},)")
    if np.dtype(v.dtype) != dtype:
        raise TypeError(f"{op}: {name} has dtype {v.dtype}; the computation runs in {dtype}")
    if isinstance(v, np.ndarray):
        if not v.flags.writeable:
            raise ValueError(f"{op}: {name} is read-only")
        if not v.flags.c_contiguous:
            return np.ascontiguousarray(v)
    return v


def batch_norm_forward(x, weight=None, bias=None, *, running_mean=None, running_var=None, training=True,
                       momentum=0.1, eps=1e-5, out=None, mean=None, invstd=None, backend=None):
    """Batch normalisation of the columns of ``x`` (N, C), as torch.nn.BatchNorm1d:
    ``y = (x - mean) * invstd * weight + bias`` with ``invstd = 1 / sqrt(var + eps)``.

    In training (``training=True``, N >= 2) mean and the biased var are the batch's, and
    when ``running_mean``/``running_var`` are given they are updated in place:
    ``running = (1 - momentum) * running + momentum * batch`` with the unbiased batch
    variance for ``running_var``. In evaluation the running statistics (required) are used.
    ``weight``/``bias`` None: ones/zeros (affine=False). Returns ``(y, mean, invstd)``,
    the (C,) statistics ``batch_norm_backward`` takes; ``out``, ``mean``, ``invstd`` may
    hold buffers for them."""
    op = "batch_norm_forward"
    be = _backend(backend)
    x, weight, bias, dtype = _norm_operands(op, x, weight, bias)
    n, c = x.shape
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: give both running_mean and running_var, or neither")
    if not training and running_mean is None:
        raise ValueError(f"{op}: evaluation (training=False) normalises with running_mean and running_var; "
                         "give them, or use the batch statistics with training=True")
    if training and n < 2:
        raise ValueError(f"{op}: training needs more than one sample per feature to take the batch "
                         f"variance, got x of shape ({_shape_str(x.shape)})")
    momentum = _validate.real(op, "momentum", momentum, low=0, high=1, expected="in [0, 1]")
    eps = _validate.real(op, "eps", eps, low=0, low_open=True)
    work = [None, None]
    if running_mean is not None:
        work = [_running(running_mean, c, dtype, op, "running_mean"), _running(running_var, c, dtype, op, "running_var")]
    out = _output(out, (n, c), dtype, be, op, x)
    mean = _output(mean, (c,), dtype, be, op + " (mean)", x)
    invstd = _output(invstd, (c,), dtype, be, op + " (invstd)", x)
    be.batch_norm_forward(x, weight, bias, work[0], work[1], bool(training), momentum, eps, out, mean, invstd)
    for updated, original in zip(work, (running_mean, running_var)):
        if updated is not original:  # a strided running statistic was updated in a copy
            original[...] = updated
    return out, mean, invstd


def _norm_backward_operands(op: str, x, grad_out, weight, mean, invstd, stats_axis: int):
    grad_out = _array(grad_out, op, "grad_out")
    x, weight, _, dtype = _norm_operands(op, x, weight, None, grad_out=grad_out)
    if tuple(grad_out.shape) != tuple(x.shape):
        raise ValueError(f"{op}: grad_out has shape ({_shape_str(grad_out.shape)}) but x has shape "
                         f"({_shape_str(x.shape)})")
    shape = (x.shape[stats_axis],)
    return (x, _prepare(grad_out, dtype, op, "grad_out"), weight, _saved(mean, shape, dtype, op, "mean"),
            _saved(invstd, shape, dtype, op, "invstd"), dtype)


def _gradient_outputs(op: str, x, dtype, be, dx, dweight, dbias):
    c = x.shape[1]
    return (_output(dx, x.shape, dtype, be, op + " (dx)", x), _output(dweight, (c,), dtype, be, op + " (dweight)", x),
            _output(dbias, (c,), dtype, be, op + " (dbias)", x))


def batch_norm_backward(x, grad_out, weight, mean, invstd, *, training=True, dx=None, dweight=None, dbias=None,
                        backend=None):
    """Gradients of :func:`batch_norm_forward` given its input ``x``, the gradient of its
    output and the ``mean``/``invstd`` it returned: ``(dx, dweight, dbias)``. With
    ``training`` the batch statistics are differentiated too; without it they are
    constants (the evaluation-mode forward). ``weight`` None: ones. ``dx``, ``dweight``,
    ``dbias`` may hold buffers for the results."""
    op = "batch_norm_backward"
    be = _backend(backend)
    x, grad_out, weight, mean, invstd, dtype = _norm_backward_operands(op, x, grad_out, weight, mean, invstd, 1)
    dx, dweight, dbias = _gradient_outputs(op, x, dtype, be, dx, dweight, dbias)
    be.batch_norm_backward(x, grad_out, weight, mean, invstd, bool(training), dx, dweight, dbias)
    return dx, dweight, dbias


def layer_norm_forward(x, weight=None, bias=None, *, eps=1e-5, out=None, mean=None, invstd=None, backend=None):
    """Layer normalisation of the rows of ``x`` (N, C), as torch.nn.LayerNorm(C):
    ``y = (x - mean) * invstd * weight + bias`` with each row's mean and biased variance,
    ``invstd = 1 / sqrt(var + eps)``. ``weight``/``bias`` None: ones/zeros. Returns
    ``(y, mean, invstd)``, the statistics of shape (N,) that ``layer_norm_backward`` takes;
    ``out``, ``mean``, ``invstd`` may hold buffers for them."""
    op = "layer_norm_forward"
    be = _backend(backend)
    x, weight, bias, dtype = _norm_operands(op, x, weight, bias)
    eps = _validate.real(op, "eps", eps, low=0, low_open=True)
    n = x.shape[0]
    out = _output(out, x.shape, dtype, be, op, x)
    mean = _output(mean, (n,), dtype, be, op + " (mean)", x)
    invstd = _output(invstd, (n,), dtype, be, op + " (invstd)", x)
    be.layer_norm_forward(x, weight, bias, eps, out, mean, invstd)
    return out, mean, invstd


def layer_norm_backward(x, grad_out, weight, mean, invstd, *, dx=None, dweight=None, dbias=None, backend=None):
    """Gradients of :func:`layer_norm_forward` given its input ``x``, the gradient of its
    output and the ``mean``/``invstd`` it returned: ``(dx, dweight, dbias)``. ``weight``
    None: ones. ``dx``, ``dweight``, ``dbias`` may hold buffers for the results."""
    op = "layer_norm_backward"
    be = _backend(backend)
    x, grad_out, weight, mean, invstd, dtype = _norm_backward_operands(op, x, grad_out, weight, mean, invstd, 0)
    dx, dweight, dbias = _gradient_outputs(op, x, dtype, be, dx, dweight, dbias)
    be.layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias)
    return dx, dweight, dbias



# ---------------------------------------------------------------------------------------
# Whole vectors: what gradient clipping by global norm is built on
# ---------------------------------------------------------------------------------------


def _vector(x, op: str):
    """``x`` (any shape) as a flat C-contiguous array of its float dtype (None: empty)."""
    x = _array(x, op, "x")
    dtype = _common_dtype(op, x=x)
    if math.prod(x.shape) == 0:
        return None
    x = _prepare(x, dtype, op, "x")
    return x.reshape(x.size) if len(x.shape) != 1 else x


def sum_squares(x, *, backend=None) -> float:
    """The sum of ``x * x`` over every element (accumulated in float64): the squared
    Euclidean norm. 0.0 for an empty array."""
    op = "sum_squares"
    be = _backend(backend)
    x = _vector(x, op)
    return 0.0 if x is None else float(be.sum_squares(x))


def max_abs(x, *, backend=None) -> float:
    """The largest ``|x|`` (the infinity norm); NaN when ``x`` holds a NaN; 0.0 for an
    empty array."""
    op = "max_abs"
    be = _backend(backend)
    x = _vector(x, op)
    return 0.0 if x is None else float(be.max_abs(x))


def scale(x, alpha, *, backend=None) -> None:
    """``x *= alpha`` in place (``alpha`` a real number, also inf or NaN, rounded to x's
    dtype as NumPy does)."""
    op = "scale"
    be = _backend(backend)
    if isinstance(alpha, (bool, np.bool_)) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"{op}: alpha must be a real number, got {alpha!r}")
    if not (isinstance(x, np.ndarray) or _is_device_array(x)):
        raise TypeError(f"{op}: x must be an array (it is scaled in place), got {type(x).__name__}")
    if np.dtype(x.dtype) not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"{op}: x has dtype {x.dtype}; arrays scaled in place must be float32 or float64")
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        raise ValueError(f"{op}: x is read-only")
    if math.prod(x.shape) == 0:
        return
    contiguous = _is_device_array(x) or x.flags.c_contiguous
    work = x if contiguous else np.ascontiguousarray(x)
    be.scale(work.reshape(work.size) if len(work.shape) != 1 else work, float(alpha))
    if not contiguous:
        x[...] = work
