"""The Cython GEMM itself: blocking edges, both packing paths, threads, the fused epilogues
and the pre-packed operand, against the float64 product of the same inputs.

The cross-backend tests (test_kernels.py) prove matmul and linear through nnkern.ops; these
call the compiled module directly, to choose the thread count and to reach the entry points
a training step uses (PackedB, linear_packed, matmul_act_grad).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkern
from nnkern import ops
from nnkern.backends import ACTIVATION_CODES, GRAD_NEEDS_OUTPUT
from _tolerance import assert_close, assert_matmul_close

if "cython" not in nnkern.available_backends():
    pytest.skip(f"cython backend unavailable: {nnkern.unavailable_reason('cython')}", allow_module_level=True)

from nnkern.backends import _cy_gemm  # noqa: E402  (compiled: only importable when built)

DTYPES = [np.float32, np.float64]

# (m, k, n) around the blocking: register tiles are 6 or 8 rows by 8 to 32 columns (a last
# panel of at most one vector's columns takes a tile one vector wide: n = 1, 3, 7, 16, 33,
# 41 or 48 with 32-column panels), K is cut into equal blocks near 256 (k = 383: one block,
# k = 385 and 577: two), M into blocks whose packed A fills 256 KiB. Sizes one past and one
# short of those, primes, and 1.
EDGE_SHAPES = [
    (1, 1, 1),
    (1, 5, 33),
    (5, 1, 7),
    (6, 16, 16),
    (7, 17, 17),
    (8, 8, 32),
    (9, 31, 33),
    (12, 255, 48),
    (10, 257, 16),
    (12, 383, 48),
    (13, 385, 31),
    (11, 577, 65),
    (5, 3001, 3),  # large k: many K blocks accumulate into C
    (700, 97, 41),  # several M blocks: B packed whole, then reused across them
    (193, 1200, 23),
]


def _operands(rng, m, k, n, trans_a, trans_b, dtype):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b, (a.T if trans_a else a), (b.T if trans_b else b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("m, k, n", EDGE_SHAPES)
def test_matmul_blocking_edges(m, k, n, trans_a, trans_b, dtype):
    rng = np.random.default_rng(m * 7919 + k * 31 + n)
    a, b, a_op, b_op = _operands(rng, m, k, n, trans_a, trans_b, dtype)
    out = np.full((m, n), np.nan, dtype=dtype)  # every element must be written, none read
    _cy_gemm.matmul(a, b, trans_a, trans_b, out, 1)
    assert_matmul_close(out, a_op, b_op)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("m, k, n", [(64, 784, 256), (130, 50, 7), (3, 40, 301), (700, 97, 41)])
def test_threads_split_the_work_without_changing_a_bit(m, k, n, trans_a, trans_b, dtype):
    """Each element is summed in the same order whatever the thread count (threads split
    rows or columns, never K), so results are identical, not just close."""
    rng = np.random.default_rng(m + k + n)
    a, b, a_op, b_op = _operands(rng, m, k, n, trans_a, trans_b, dtype)
    one, two, many = (np.empty((m, n), dtype) for _ in range(3))
    _cy_gemm.matmul(a, b, trans_a, trans_b, one, 1)
    _cy_gemm.matmul(a, b, trans_a, trans_b, two, 2)
    _cy_gemm.matmul(a, b, trans_a, trans_b, many, 5)
    assert_matmul_close(one, a_op, b_op)
    np.testing.assert_array_equal(two, one)
    np.testing.assert_array_equal(many, one)


def _reference_linear(x, w, b, act, slope, dtype):
    pre = np.asarray(x, np.float64) @ np.asarray(w, np.float64) + b
    name, params = _public_activation(act, slope)
    return pre, ops.activation(name, pre.astype(dtype), backend="numpy", **params)


def _public_activation(act, slope):
    """(name, params) of nnkern.ops for a kernel activation kind."""
    if act == "gelu_tanh":
        return "gelu", {"approximate": "tanh"}
    if act == "leaky_relu":
        return "leaky_relu", {"negative_slope": slope}
    return act, {}


KINDS = list(ACTIVATION_CODES)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", KINDS)
@pytest.mark.parametrize("m, k, n", [(1, 1, 1), (13, 577, 33), (64, 100, 17)])
def test_linear_epilogue_applies_bias_and_activation_once(m, k, n, act, dtype):
    """With several K blocks (k = 577) the bias must be added after the last one only."""
    rng = np.random.default_rng(k + n)
    x = rng.standard_normal((m, k)).astype(dtype)
    w = (rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    slope = 0.2
    pre, expected = _reference_linear(x, w, b, act, slope, dtype)
    out = np.empty((m, n), dtype)
    _cy_gemm.linear(x, w, b, ACTIVATION_CODES[act], slope, out, 2)
    if act == "step":  # a product that rounds across 0 flips the step: compare away from it
        keep = np.abs(pre) > 1e-3
        np.testing.assert_array_equal(out[keep], expected[keep])
    else:
        # the activation's argument carries the product's rounding, ~sqrt(k) ulp
        assert_close(out, expected, dtype, factor=4 * np.sqrt(k) * (8 if dtype == np.float32 else 64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", KINDS)
@pytest.mark.parametrize("trans_b", [False, True])
def test_matmul_act_grad_fuses_the_backward_mask(act, trans_b, dtype):
    """dX = (dY @ W.T) * act'(x or y) in one GEMM equals the two separate reference steps."""
    m, k, n = 19, 37, 45
    rng = np.random.default_rng(len(act))
    dy = rng.standard_normal((m, k)).astype(dtype)
    w = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    x = rng.standard_normal((m, n)).astype(dtype)
    x[0, :5] = 0.0  # relu's gradient at 0 is 0
    name, params = _public_activation(act, 0.2)
    y = ops.activation(name, x, backend="numpy", **params)
    src = y if act in GRAD_NEEDS_OUTPUT else x
    product = ops.matmul(dy, w, trans_b=trans_b, backend="numpy")
    expected = ops.activation_grad(name, x, y, product, backend="numpy", **params)
    out = np.empty((m, n), dtype)
    _cy_gemm.matmul_act_grad(dy, w, False, trans_b, ACTIVATION_CODES[act], src, 0.2, out, 2)
    assert_close(out, expected, dtype, scale=np.abs(product).max(), factor=8 * np.sqrt(k))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True)])
@pytest.mark.parametrize("m, k, n", [(1, 3, 1), (64, 784, 100), (131, 300, 17), (700, 97, 41)])
def test_packed_b_is_reused_and_repacked(m, k, n, trans_a, trans_b, dtype):
    rng = np.random.default_rng(m * k)
    a, b, a_op, b_op = _operands(rng, m, k, n, trans_a, trans_b, dtype)
    packed = _cy_gemm.PackedB(b, trans_b, 2)
    assert (packed.k, packed.n) == (k, n)
    bias = rng.standard_normal(n).astype(dtype)
    out = np.empty((m, n), dtype)
    for _ in range(2):  # the packed operand is not consumed by a product
        _cy_gemm.linear_packed(a, packed, trans_a, None, ACTIVATION_CODES["identity"], 0.0, out, 2)
        assert_matmul_close(out, a_op, b_op)
    _cy_gemm.linear_packed(a, packed, trans_a, bias, ACTIVATION_CODES["relu"], 0.0, out, 1)
    pre = np.asarray(a_op, np.float64) @ np.asarray(b_op, np.float64) + bias
    keep = np.abs(pre) > 1e-3
    assert np.all(out[~keep] < 2e-3) and np.all(out[pre < -1e-3] == 0)
    assert_close(out[keep], np.maximum(pre, 0)[keep], dtype, factor=4 * k)

    b[...] = rng.standard_normal(b.shape)  # new weights: repack into the same buffer
    packed.repack(b, 1)
    _cy_gemm.linear_packed(a, packed, trans_a, None, ACTIVATION_CODES["identity"], 0.0, out, 1)
    assert_matmul_close(out, a_op, b_op)


def test_packed_b_guards_its_own_entry_points():
    b = np.ones((4, 3), np.float32)
    packed = _cy_gemm.PackedB(b, False, 1)
    out = np.empty((2, 3), np.float32)
    with pytest.raises(ValueError, match="cannot multiply"):
        _cy_gemm.linear_packed(np.ones((2, 5), np.float32), packed, False, None, 0, 0.0, out, 1)
    with pytest.raises(TypeError, match="dtype"):
        _cy_gemm.linear_packed(np.ones((2, 4)), packed, False, None, 0, 0.0, np.empty((2, 3)), 1)
    with pytest.raises(ValueError, match="shape"):
        packed.repack(np.ones((3, 4), np.float32), 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_views_and_out_through_ops(dtype):
    """Strided and transposed views and out= reach the GEMM through nnkern.ops."""
    rng = np.random.default_rng(5)
    base_a = rng.standard_normal((40, 90)).astype(dtype)
    base_b = rng.standard_normal((70, 60)).astype(dtype)
    a = base_a[::2, ::3]  # (20, 30), strided
    b = base_b[:30, ::2].T.T  # (30, 30), strided
    out = np.empty((20, 30), dtype)
    result = ops.matmul(a, b, out=out, backend="cython")
    assert result is out
    assert_matmul_close(out, a, b)
    w = base_b.T  # (60, 70): F-contiguous, passed as its base with trans flipped
    assert_matmul_close(ops.matmul(base_a[:, :60], w, backend="cython"), base_a[:, :60], w)


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 70),
    k=st.integers(1, 450),
    n=st.integers(1, 70),
    trans_a=st.booleans(),
    trans_b=st.booleans(),
    dtype=st.sampled_from(DTYPES),
    threads=st.integers(1, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_property(m, k, n, trans_a, trans_b, dtype, threads, seed):
    rng = np.random.default_rng(seed)
    a, b, a_op, b_op = _operands(rng, m, k, n, trans_a, trans_b, dtype)
    out = np.full((m, n), np.nan, dtype=dtype)
    _cy_gemm.matmul(a, b, trans_a, trans_b, out, threads)
    assert_matmul_close(out, a_op, b_op)


def test_the_gemm_variant_is_the_best_this_cpu_runs():
    """A portable build (the wheel; CI tests one) must pick the widest tiles the CPU has, a
    native build those of its -march=native."""
    variant = _cy_gemm.gemm_variant()
    assert "native build" in variant or "portable build" in variant, variant
    if "portable build" not in variant:
        return
    with open("/proc/cpuinfo") as cpuinfo:
        flags = set(next(line for line in cpuinfo if line.startswith("flags")).split(":")[1].split())
    best = "AVX-512" if "avx512f" in flags else "AVX2+FMA" if {"avx2", "fma"} <= flags else "SSE2"
    assert variant.startswith(best + " tiles"), (variant, best)
