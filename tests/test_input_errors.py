"""Bad input gets the same clear exception on every backend, and never crashes the process.

BAD_INPUTS is the table: (case id, op call, exception type, message pattern). Each case runs
on every available CPU backend in this process, and all of them once more in a subprocess
per backend that must exit normally (a segfault or abort there fails the test).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from nnkern import ops

f32 = np.float32


def _z(*shape, dtype=np.float64):
    return np.zeros(shape, dtype=dtype)


BAD_INPUTS = [
    # shapes
    ("matmul-inner", lambda be: ops.matmul(_z(4, 10), _z(8, 5), backend=be), ValueError,
     r"matmul: cannot multiply \(4x10\) by \(8x5\)"),
    ("matmul-trans", lambda be: ops.matmul(_z(4, 10), _z(8, 5), trans_b=True, backend=be), ValueError,
     r"cannot multiply \(4x10\) by \(5x8\)"),
    ("matmul-3d", lambda be: ops.matmul(_z(2, 3, 4), _z(4, 5), backend=be), ValueError,
     r"matmul: a must be 2-D, got shape \(2x3x4\)"),
    ("matmul-out-shape", lambda be: ops.matmul(_z(2, 3), _z(3, 4), out=_z(4, 2), backend=be), ValueError,
     r"out has shape \(4x2\), expected \(2x4\)"),
    ("matmul-out-dtype", lambda be: ops.matmul(_z(2, 3), _z(3, 4), out=_z(2, 4, dtype=f32), backend=be), TypeError,
     r"out has dtype float32, expected float64"),
    ("matmul-out-readonly", lambda be: ops.matmul(_z(2, 3), _z(3, 4), out=np.broadcast_to(0.0, (2, 4)), backend=be),
     ValueError, r"out is read-only"),
    ("matmul-out-strided", lambda be: ops.matmul(_z(2, 3), _z(3, 4), out=_z(2, 8)[:, ::2], backend=be), ValueError,
     r"out must be C-contiguous"),
    ("linear-width", lambda be: ops.linear(_z(4, 10), _z(8, 5), _z(5), backend=be), ValueError,
     r"linear: cannot multiply \(4x10\) by \(8x5\)"),
    ("linear-bias", lambda be: ops.linear(_z(4, 8), _z(8, 5), _z(4), backend=be), ValueError,
     r"bias has shape \(4\), expected \(5,\)"),
    ("activation-name", lambda be: ops.activation("swish", _z(3), backend=be), ValueError,
     r"unknown activation 'swish'"),
    ("activation-param", lambda be: ops.activation("relu", _z(3), negative_slope=0.1, backend=be), TypeError,
     r"takes no parameter"),
    ("activation-grad-shape", lambda be: ops.activation_grad("relu", _z(3), None, _z(4), backend=be), ValueError,
     r"x has shape \(3\) but grad_out has shape \(4\)"),
    ("activation-grad-needs-y", lambda be: ops.activation_grad("sigmoid", _z(3), None, _z(3), backend=be),
     ValueError, r"needs y"),
    ("softmax-1d", lambda be: ops.softmax(_z(5), backend=be), ValueError, r"softmax: x must be 2-D"),
    # labels
    ("label-too-large", lambda be: ops.softmax_cross_entropy(_z(4, 10), np.array([0, 1, 10, 2]), backend=be),
     ValueError, r"label 10 at index 2 is out of range for 10 classes \(0\.\.9\)"),
    ("label-huge", lambda be: ops.softmax_cross_entropy(_z(2, 10), np.array([0, 10**9]), backend=be),
     ValueError, r"label 1000000000 at index 1 is out of range"),
    ("label-negative", lambda be: ops.softmax_cross_entropy(_z(3, 10), np.array([0, -1, 2]), backend=be),
     ValueError, r"label -1 at index 1 is out of range"),
    ("label-fraction", lambda be: ops.softmax_cross_entropy(_z(3, 10), np.array([0.0, 1.5, 2.0]), backend=be),
     ValueError, r"labels must be integers, got 1.5 at index 1"),
    ("label-nan", lambda be: ops.softmax_cross_entropy(_z(2, 10), np.array([0.0, np.nan]), backend=be),
     ValueError, r"labels must be integers, got nan at index 1"),
    ("label-count", lambda be: ops.softmax_cross_entropy(_z(3, 10), np.array([0, 1]), backend=be),
     ValueError, r"logits have 3 rows but labels have 2 entries"),
    ("label-strings", lambda be: ops.softmax_cross_entropy(_z(2, 3), np.array(["a", "b"]), backend=be),
     TypeError, r"labels have dtype <U1; expected integer class indices"),
    ("label-bool", lambda be: ops.softmax_cross_entropy(_z(2, 3), np.array([True, False]), backend=be),
     TypeError, r"expected integer class indices"),
    ("targets-shape", lambda be: ops.softmax_cross_entropy(_z(4, 10), _z(4, 9), backend=be), ValueError,
     r"logits have shape \(4x10\) but targets have shape \(4x9\)"),
    ("empty-batch", lambda be: ops.softmax_cross_entropy(_z(0, 10), np.array([], dtype=int), backend=be),
     ValueError, r"logits is empty"),
    ("mse-shape", lambda be: ops.mse(_z(4, 2), _z(4, 3), backend=be), ValueError,
     r"pred has shape \(4x2\) but target has shape \(4x3\)"),
    ("mse-reduction", lambda be: ops.mse(_z(4), _z(4), reduction="sum", backend=be), ValueError,
     r"reduction must be 'mean' or 'half_sum'"),
    ("bce-empty", lambda be: ops.binary_cross_entropy(_z(0), _z(0), backend=be), ValueError, r"prob is empty"),
    # dtypes
    ("complex", lambda be: ops.matmul(np.zeros((2, 2), complex), _z(2, 2), backend=be), TypeError,
     r"a has dtype complex128; expected real numbers"),
    ("object", lambda be: ops.activation("relu", np.array([1, None], dtype=object), backend=be), TypeError,
     r"x has dtype object"),
    ("strings", lambda be: ops.softmax(np.array([["a", "b"]]), backend=be), TypeError, r"expected real numbers"),
    ("ragged", lambda be: ops.softmax([[1.0, 2.0], [3.0]], backend=be), ValueError, r"cannot be made into an array"),
    ("none", lambda be: ops.matmul(None, _z(2, 2), backend=be), TypeError, r"a is None"),
    # optimizer state
    ("state-shape", lambda be: ops.momentum_update(_z(4), _z(4), _z(5), 0.1, 0.9, backend=be), ValueError,
     r"v has shape \(5\) but p has shape \(4\)"),
    ("state-dtype", lambda be: ops.adam_update(_z(4), _z(4), _z(4, dtype=f32), _z(4), 1, backend=be), TypeError,
     r"m has dtype float32 but p has dtype float64"),
    ("param-readonly", lambda be: ops.sgd_update(np.broadcast_to(0.0, (4,)), _z(4), 0.1, backend=be), ValueError,
     r"p is read-only"),
    ("param-list", lambda be: ops.sgd_update([1.0, 2.0], _z(2), 0.1, backend=be), TypeError,
     r"p must be an array \(it is updated in place\)"),
    ("param-int", lambda be: ops.sgd_update(np.zeros(3, dtype=int), _z(3), 0.1, backend=be), TypeError,
     r"updated arrays must be float32 or float64"),
    ("adam-step-zero", lambda be: ops.adam_update(_z(2), _z(2), _z(2), _z(2), 0, backend=be), ValueError,
     r"t is the 1-based step number, got 0"),
    ("lr-nan", lambda be: ops.sgd_update(_z(2), _z(2), float("nan"), backend=be), ValueError,
     r"lr must be finite, got nan"),
    ("lr-negative", lambda be: ops.sgd_update(_z(2), _z(2), -0.1, backend=be), ValueError, r"lr must be >= 0"),
    ("beta-one", lambda be: ops.adam_update(_z(2), _z(2), _z(2), _z(2), 1, beta2=1.0, backend=be), ValueError,
     r"beta2 must be < 1"),
    ("adamw-step-zero", lambda be: ops.adamw_update(_z(2), _z(2), _z(2), _z(2), 0, backend=be), ValueError,
     r"adamw_update: t is the 1-based step number, got 0"),
    ("adamw-negative-decay", lambda be: ops.adamw_update(_z(2), _z(2), _z(2), _z(2), 1, weight_decay=-0.1,
                                                         backend=be), ValueError, r"weight_decay must be >= 0"),
]


@pytest.mark.parametrize("case_id,call,exc,pattern", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_clear_error(any_backend, case_id, call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call(any_backend)


def test_bad_inputs_never_crash_the_interpreter(any_backend):
    """All cases in a fresh process: it must exit normally having seen every exception."""
    script = f"""
import json, sys
sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r})
from test_input_errors import BAD_INPUTS
seen = []
for case_id, call, exc, pattern in BAD_INPUTS:
    try:
        call({any_backend!r})
    except exc:
        seen.append(case_id)
print(json.dumps(seen))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit code {proc.returncode}\n{proc.stderr[-2000:]}"
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [c[0] for c in BAD_INPUTS]


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
def test_integer_and_bool_inputs_become_float64(any_backend, dtype):
    x = np.array([[0, 1], [1, 0]], dtype=dtype)
    y = ops.activation("relu", x, backend=any_backend)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, x.astype(np.float64))


def test_float16_computes_in_float32(any_backend):
    assert ops.softmax(np.zeros((2, 3), np.float16), backend=any_backend).dtype == np.float32


def test_nan_propagates_as_numpy_does(any_backend):
    x = np.array([[1.0, np.nan], [0.0, 1.0]])
    s = ops.softmax(x, backend=any_backend)
    assert np.all(np.isnan(s[0])) and np.all(np.isfinite(s[1]))
    assert np.isnan(ops.activation("tanh", np.array([np.nan]), backend=any_backend)[0])
    loss, _ = ops.softmax_cross_entropy(x, np.array([0, 1]), backend=any_backend)
    assert np.isnan(loss)
