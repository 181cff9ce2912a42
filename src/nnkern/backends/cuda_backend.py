"""The "cuda" backend: the raw kernel interface on NVIDIA GPUs, through Numba CUDA.

The kernels are in :mod:`cuda_kernels`; this module launches them. Every argument may be
a host NumPy array or a device array (a Numba device array, or anything else with
``__cuda_array_interface__``, viewed without a copy):

* host inputs are copied to the device, host outputs are filled from the device after
  the kernels ran, and in-place updates of host arrays are copied there and back;
* device arrays are used where they are. When every argument lives on the device, the
  only transfer is the one float64 a loss reads back.

The training path this is built for: parameters and optimizer state are created on the
device once (``cuda.to_device``), each batch and its labels are copied there once, and
every op's output is then a device array (:func:`device_empty`), so a whole step —
forward, loss, backward, update — runs on the GPU and reads back only the loss.
Kernel launches are asynchronous; that read is the step's only synchronisation.

Runs on a GPU with a working CUDA driver and NVVM (``pip install 'nnkern[cuda]'``), or
on Numba's CUDA simulator when ``NUMBA_ENABLE_CUDASIM=1`` is set before Numba is imported
(slow: for tests).
"""

from __future__ import annotations

import math

import numpy as np

try:
    import numba_cuda  # noqa: F401  NVIDIA's maintained CUDA target (numba's own is deprecated)
except ImportError as exc:
    raise ImportError(
        "the 'cuda' backend needs NVIDIA's numba-cuda package: pip install 'nnkern[cuda]'"
    ) from exc

import numba
from numba import cuda

from . import ACTIVATION_CODES
from .cuda_kernels import (
    BIAS_COLUMNS,
    BIAS_ROW_GROUPS,
    GEMM_SIDE,
    MAX_BLOCKS,
    REDUCE_BLOCKS,
    ROW_THREADS,
    THREADS,
    TILE,
    kernel_family,
    sum_reduce,
)


def check_usable() -> None:
    """Raise RuntimeError saying why, unless a GPU (or the simulator) can run the kernels."""
    if numba.config.ENABLE_CUDASIM:
        return
    if cuda.is_available():
        return
    driver_error = cuda.cuda_error()
    if driver_error:
        reason = "no CUDA GPU found: " + " ".join(str(driver_error).split()).rstrip(".")
    else:
        reason = "a CUDA driver was found but not NVVM, the CUDA compiler (pip install 'nnkern[cuda]')"
    raise RuntimeError(f"{reason}; set NUMBA_ENABLE_CUDASIM=1 to use the simulator")


def device_empty(shape, dtype):
    """An uninitialised device array (the ops layer's outputs for device inputs)."""
    return cuda.device_array(tuple(shape), dtype=np.dtype(dtype))


# ---------------------------------------------------------------------------------------
# Host/device staging
# ---------------------------------------------------------------------------------------


def _device_view(x):
    """A device array ``x`` as a Numba device array, without copying."""
    if getattr(x, "__cuda_ndarray__", False):  # Numba's own (also the simulator's)
        return x
    return cuda.as_cuda_array(x)


class _Staging:
    """The device arrays one raw kernel call works on. Host arrays are copied in (inputs,
    in-place arrays) or allocated on the device (outputs); leaving the ``with`` block
    without an error copies the device results back into the host outputs."""

    def __init__(self):
        self._copy_back = []

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            for device, host in self._copy_back:
                device.copy_to_host(host)
        return False

    def input(self, x):
        return cuda.to_device(x) if isinstance(x, np.ndarray) else _device_view(x)

    def output(self, x):
        if isinstance(x, np.ndarray):
            device = cuda.device_array(x.shape, dtype=x.dtype)
            self._copy_back.append((device, x))
            return device
        return _device_view(x)

    def in_place(self, x):
        if isinstance(x, np.ndarray):
            device = cuda.to_device(x)
            self._copy_back.append((device, x))
            return device
        return _device_view(x)


def _flat(x):
    """A 1-D view of a C-contiguous device array."""
    return x if len(x.shape) == 1 else x.reshape(x.size)


def _grid(size: int) -> int:
    """Blocks of THREADS for a grid-stride loop over ``size`` elements."""
    return max(1, min(MAX_BLOCKS, math.ceil(size / THREADS)))


def _read_sum(values) -> float:
    """Sum a device float64 vector on the device and read back that one number."""
    total = cuda.device_array(1, dtype=np.float64)
    sum_reduce[1, THREADS](values, total)
    return float(total.copy_to_host()[0])


# ---------------------------------------------------------------------------------------
# Raw kernels (signatures: nnkern.backends)
# ---------------------------------------------------------------------------------------


def _gemm_grid(out_shape):
    m, n = out_shape
    return (math.ceil(n / TILE), math.ceil(m / TILE)), (GEMM_SIDE, GEMM_SIDE)


def matmul(a, b, trans_a, trans_b, out):
    kernels = kernel_family(out.dtype)
    grid, block = _gemm_grid(out.shape)
    with _Staging() as s:
        kernels.matmul[grid, block](s.input(a), s.input(b), bool(trans_a), bool(trans_b), s.output(out))


def linear(x, w, b, act, slope, out):
    kernels = kernel_family(out.dtype)
    grid, block = _gemm_grid(out.shape)
    with _Staging() as s:
        kernels.linear[grid, block](s.input(x), s.input(w), s.input(b), ACTIVATION_CODES[act],
                                    kernels.scalar(slope), s.output(out))


def activation(act, x, slope, out):
    kernels = kernel_family(out.dtype)
    with _Staging() as s:
        kernels.activation[_grid(out.size), THREADS](
            ACTIVATION_CODES[act], _flat(s.input(x)), kernels.scalar(slope), _flat(s.output(out)))


def activation_grad(act, x, y, grad_out, slope, out):
    kernels = kernel_family(out.dtype)
    given = x if y is None else y  # which one the gradient of `act` is computed from
    with _Staging() as s:
        kernels.activation_grad[_grid(out.size), THREADS](
            ACTIVATION_CODES[act], _flat(s.input(given)), _flat(s.input(grad_out)),
            kernels.scalar(slope), _flat(s.output(out)))


def softmax(x, out):
    kernels = kernel_family(out.dtype)
    with _Staging() as s:
        kernels.softmax[out.shape[0], ROW_THREADS](s.input(x), s.output(out))


def softmax_cross_entropy(logits, labels, dlogits):
    kernels = kernel_family(dlogits.dtype)
    n = dlogits.shape[0]
    kernel = (kernels.softmax_cross_entropy_labels if len(labels.shape) == 1
              else kernels.softmax_cross_entropy_targets)
    row_loss = cuda.device_array(n, dtype=np.float64)
    with _Staging() as s:
        kernel[n, ROW_THREADS](s.input(logits), s.input(labels), kernels.scalar(n),
                               s.output(dlogits), row_loss)
        loss = _read_sum(row_loss) / n
    if loss == -math.inf:  # the labels kernel's mark of a label outside 0..C-1
        raise ValueError(
            f"softmax_cross_entropy: a device label is out of range for {dlogits.shape[1]} classes "
            f"(0..{dlogits.shape[1] - 1})"
        )
    return loss


def _loss_blocks(size: int) -> int:
    return max(1, min(REDUCE_BLOCKS, math.ceil(size / THREADS)))


def mse(pred, target, half_sum, dpred):
    kernels = kernel_family(dpred.dtype)
    size = dpred.size
    blocks = _loss_blocks(size)
    partials = cuda.device_array(blocks, dtype=np.float64)
    grad_scale = kernels.scalar(1.0 if half_sum else 2.0 / size)
    with _Staging() as s:
        kernels.mse[blocks, THREADS](_flat(s.input(pred)), _flat(s.input(target)), grad_scale,
                                     _flat(s.output(dpred)), partials)
        total = _read_sum(partials)
    return 0.5 * total if half_sum else total / size


def binary_cross_entropy(prob, target, dprob):
    kernels = kernel_family(dprob.dtype)
    size = dprob.size
    blocks = _loss_blocks(size)
    partials = cuda.device_array(blocks, dtype=np.float64)
    with _Staging() as s:
        kernels.binary_cross_entropy[blocks, THREADS](
            _flat(s.input(prob)), _flat(s.input(target)), _flat(s.output(dprob)), partials)
        total = _read_sum(partials)
    return -total / size


def bias_grad(dy, out):
    kernels = kernel_family(out.dtype)
    grid = math.ceil(out.shape[0] / BIAS_COLUMNS)
    with _Staging() as s:
        kernels.bias_grad[grid, (BIAS_COLUMNS, BIAS_ROW_GROUPS)](s.input(dy), s.output(out))


# Optimizer updates: p, g and the state arrays are 1-D (the ops layer flattens them).
# Scalars are passed in the parameters' dtype, and coefficients such as 1 - beta are
# formed here in float64 first, as NumPy does with the reference's Python floats.


def _update(name, p, g, states, coefficients):
    kernels = kernel_family(p.dtype)
    with _Staging() as s:
        arrays = [s.in_place(p), s.input(g)] + [s.in_place(state) for state in states]
        getattr(kernels, name)[_grid(p.size), THREADS](*arrays, *(kernels.scalar(c) for c in coefficients))


def sgd_update(p, g, lr):
    _update("sgd_update", p, g, (), (lr,))


def momentum_update(p, g, v, lr, momentum):
    _update("momentum_update", p, g, (v,), (lr, momentum))


def nesterov_update(p, g, v, lr, momentum):
    _update("nesterov_update", p, g, (v,), (lr, momentum))


def adagrad_update(p, g, h, lr, eps):
    _update("adagrad_update", p, g, (h,), (lr, eps))


def rmsprop_update(p, g, h, lr, alpha, eps):
    _update("rmsprop_update", p, g, (h,), (lr, alpha, 1.0 - alpha, eps))


def adadelta_update(p, g, h, d, lr, rho, eps):
    _update("adadelta_update", p, g, (h, d), (lr, rho, 1.0 - rho, eps))


def adam_update(p, g, m, v, t, lr, beta1, beta2, eps):
    _update("adam_update", p, g, (m, v),
            (lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - beta1**t, 1.0 - beta2**t, eps))


def adamw_update(p, g, m, v, t, lr, beta1, beta2, eps, weight_decay):
    _update("adamw_update", p, g, (m, v),
            (1.0 - lr * weight_decay, lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 - beta1**t,
             1.0 - beta2**t, eps))


# Normalisation: BatchNorm's kernels take BIAS_COLUMNS columns per block (its statistics
# are column sums); LayerNorm's a row per block, and its parameter gradients the columns.


def _column_launch(columns: int):
    return math.ceil(columns / BIAS_COLUMNS), (BIAS_COLUMNS, BIAS_ROW_GROUPS)


def batch_norm_forward(x, weight, bias, running_mean, running_var, training, momentum, eps, out, mean, invstd):
    kernels = kernel_family(out.dtype)
    grid, block = _column_launch(out.shape[1])
    with _Staging() as s:
        saved_mean, saved_invstd = s.output(mean), s.output(invstd)
        if running_mean is None:  # typed arguments: the unused running statistics are the outputs
            running = (saved_mean, saved_invstd)
        elif training:
            running = (s.in_place(running_mean), s.in_place(running_var))
        else:
            running = (s.input(running_mean), s.input(running_var))
        kernels.batch_norm_forward[grid, block](
            s.input(x), s.input(weight), s.input(bias), *running, bool(training and running_mean is not None),
            bool(training), float(momentum), float(eps), s.output(out), saved_mean, saved_invstd)


def batch_norm_backward(x, grad_out, weight, mean, invstd, training, dx, dweight, dbias):
    kernels = kernel_family(dx.dtype)
    grid, block = _column_launch(dx.shape[1])
    with _Staging() as s:
        kernels.batch_norm_backward[grid, block](
            s.input(x), s.input(grad_out), s.input(weight), s.input(mean), s.input(invstd), bool(training),
            s.output(dx), s.output(dweight), s.output(dbias))


def layer_norm_forward(x, weight, bias, eps, out, mean, invstd):
    kernels = kernel_family(out.dtype)
    with _Staging() as s:
        kernels.layer_norm_forward[out.shape[0], ROW_THREADS](
            s.input(x), s.input(weight), s.input(bias), float(eps), s.output(out), s.output(mean), s.output(invstd))


def layer_norm_backward(x, grad_out, weight, mean, invstd, dx, dweight, dbias):
    kernels = kernel_family(dx.dtype)
    grid, block = _column_launch(dx.shape[1])
    with _Staging() as s:
        x, grad_out, mean, invstd = s.input(x), s.input(grad_out), s.input(mean), s.input(invstd)
        kernels.layer_norm_input_grad[dx.shape[0], ROW_THREADS](x, grad_out, s.input(weight), mean, invstd,
                                                                s.output(dx))
        kernels.layer_norm_parameter_grad[grid, block](x, grad_out, mean, invstd, s.output(dweight),
                                                       s.output(dbias))


# Whole vectors (gradient clipping by global norm)


def sum_squares(x):
    kernels = kernel_family(x.dtype)
    blocks = _loss_blocks(x.size)
    partials = cuda.device_array(blocks, dtype=np.float64)
    with _Staging() as s:
        kernels.sum_squares[blocks, THREADS](_flat(s.input(x)), partials)
        return _read_sum(partials)


def max_abs(x):
    kernels = kernel_family(x.dtype)
    blocks = _loss_blocks(x.size)
    partials = cuda.device_array(blocks, dtype=np.float64)
    with _Staging() as s:
        kernels.max_abs[blocks, THREADS](_flat(s.input(x)), partials)
    return float(np.max(partials.copy_to_host()))  # the blocks' results: NaN propagates


def scale(x, alpha):
    kernels = kernel_family(x.dtype)
    with _Staging() as s:
        kernels.scale[_grid(x.size), THREADS](_flat(s.in_place(x)), kernels.scalar(alpha))
