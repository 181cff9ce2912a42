"""Tests of what only the "numba" backend has: its GEMM's blocking and threading, lazy
compilation and the on-disk cache, and properties of its GEMM and softmax-cross-entropy.

Cache directory: tests that look at the cache run the kernels in a fresh Python process
with NUMBA_CACHE_DIR set to a temporary directory (a fresh one, or one that cannot be
created at all), because Numba reads that variable once, at import. In this process the
kernels use whatever cache location Numba picks (NUMBA_CACHE_DIR, else __pycache__ next to
the sources, else a per-user directory); the tests here pass with any of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkern
from nnkern import ops
from _tolerance import assert_close, assert_matmul_close

pytestmark = pytest.mark.skipif("numba" not in nnkern.available_backends(),
                                reason=f"numba backend unavailable: {nnkern.unavailable_reason('numba')}")

DTYPES = [np.float32, np.float64]


def _kernels():
    from nnkern.backends import numba_kernels

    return numba_kernels


@pytest.fixture(params=[1, 2], ids=["1-thread", "2-threads"])
def threads(request):
    """Run with n threads (the serial GEMM and the column-parallel one), then restore."""
    before = nnkern.get_num_threads()
    nnkern.set_num_threads(request.param)
    yield request.param
    nnkern.set_num_threads(before)


def _operands(rng, m, k, n, dtype, trans_a, trans_b):
    a = rng.standard_normal((k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.standard_normal((n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


# ---------------------------------------------------------------------------------------
# GEMM blocking edges: around the tile, the k block, the row block and the column split
# ---------------------------------------------------------------------------------------


def test_gemm_tile_follows_the_target_vector_width(monkeypatch):
    """The micro-kernel's vectors are as wide as the registers Numba compiles for: 64 bytes
    with AVX-512F (host or NUMBA_CPU_FEATURES), 32 for a named portable target."""
    from llvmlite import binding
    from numba import config

    k_ = _kernels()
    host_avx512 = binding.get_host_cpu_features().get("avx512f", False)
    if config.CPU_FEATURES is None and config.CPU_NAME is None:
        assert k_.GEMM_VECTOR_BYTES == (64 if host_avx512 else 32)
    assert (k_.GEMM_MR, k_.GEMM_NR32, k_.GEMM_NR64) == (
        (8, 32, 16) if k_.GEMM_VECTOR_BYTES == 64 else (6, 16, 8))
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma,+avx512f")
    assert k_._vector_bytes() == 64
    monkeypatch.setattr(config, "CPU_FEATURES", "+avx2,+fma")
    assert k_._vector_bytes() == 32
    monkeypatch.setattr(config, "CPU_FEATURES", None)
    monkeypatch.setattr(config, "CPU_NAME", "generic")
    assert k_._vector_bytes() == 32


def _edge_shapes(dtype):
    k_ = _kernels()
    mr, kc = k_.GEMM_MR, k_.GEMM_KC
    nr = k_.GEMM_NR32 if np.dtype(dtype).itemsize == 4 else k_.GEMM_NR64
    return [
        (mr - 1, kc - 1, nr + 1),
        (mr + 1, kc, 2 * nr - 1),
        (2 * mr + 1, kc + 1, 5),  # two k blocks of 129 and 128
        (mr, 3, nr),  # one whole tile
        (mr + 1, 2 * kc + 3, 2 * nr + 2),  # three k blocks, edge tiles
        (5, 1, 7),  # k = 1
        (4 * mr + 3, 2 * kc, 4 * nr + 1),  # two whole k blocks, parallel (>= 2**19 FMAs)
        (97, 31, 41),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_gemm_blocking_edges(threads, dtype, trans_a, trans_b):
    rng = np.random.default_rng(7)
    for m, k, n in _edge_shapes(dtype):
        a, b = _operands(rng, m, k, n, dtype, trans_a, trans_b)
        c = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, backend="numba")
        assert_matmul_close(c, a.T if trans_a else a, b.T if trans_b else b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act,params", [("relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
                                        ("sigmoid", {}), ("gelu", {"approximate": "tanh"})])
def test_linear_epilogue_after_the_last_k_block(threads, dtype, act, params):
    """The bias and the activation are applied once, after the last k block, on every
    tile including the partial ones."""
    kc = _kernels().GEMM_KC
    rng = np.random.default_rng(11)
    n, k, m = 97, kc + 5, 2 * _kernels().GEMM_NR32 + 1
    x = rng.standard_normal((n, k)).astype(dtype)
    w = (rng.standard_normal((k, m)) / np.sqrt(k)).astype(dtype)
    b = rng.standard_normal(m).astype(dtype)
    got = ops.linear(x, w, b, act, backend="numba", **params)
    z = x.astype(np.float64) @ w.astype(np.float64) + b
    want = ops.activation(act, z, backend="numpy", **params)
    scale = (np.abs(x.astype(np.float64)) @ np.abs(w.astype(np.float64))).max() + 1
    tol = 2.4 * k * np.finfo(dtype).eps * scale + 4 * np.finfo(dtype).eps * (np.abs(want).max() + 1)
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=0, atol=tol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemm_result_does_not_depend_on_threads_or_transposes(dtype):
    """Each output is one dot product with one summation order, whichever thread computes
    it and whichever operand was packed: the results agree bit for bit."""
    rng = np.random.default_rng(3)
    a = rng.standard_normal((130, 301)).astype(dtype)
    b = rng.standard_normal((301, 95)).astype(dtype)
    before = nnkern.get_num_threads()
    try:
        results = []
        for n_threads in (1, 2):
            nnkern.set_num_threads(n_threads)
            results.append(ops.matmul(a, b, backend="numba"))
            results.append(ops.matmul(np.ascontiguousarray(a.T), b, trans_a=True, backend="numba"))
            results.append(ops.matmul(a, np.ascontiguousarray(b.T), trans_b=True, backend="numba"))
            results.append(ops.matmul(b, a, trans_a=True, trans_b=True, backend="numba").T)
    finally:
        nnkern.set_num_threads(before)
    for result in results[1:]:
        np.testing.assert_array_equal(result, results[0])


def test_fast_math_flags_keep_infinities_and_nans():
    """The kernels' fast-math flags leave out nnan and ninf: -inf logits, saturated
    sigmoids and NaNs behave as IEEE says, not as the optimiser assumes."""
    assert not {"nnan", "ninf", "fast"} & set(_kernels().FASTMATH)
    for dtype in DTYPES:
        probs = ops.softmax(np.array([[-np.inf, 0.0, np.log(3.0)]], dtype), backend="numba")
        assert_close(probs, [[0.0, 0.25, 0.75]], dtype, factor=4)
        sig = ops.activation("sigmoid", np.array([-np.inf, np.inf, np.nan], dtype), backend="numba")
        np.testing.assert_array_equal(sig[:2], [0.0, 1.0])
        assert np.isnan(sig[2])
        a = np.ones((4, 200), dtype)
        a[1, 7] = np.nan
        c = ops.matmul(a, np.ones((200, 5), dtype), backend="numba")
        assert np.isnan(c[1]).all() and np.isfinite(np.delete(c, 1, axis=0)).all()


# ---------------------------------------------------------------------------------------
# Lazy compilation, one specialisation per dtype, and the on-disk cache
# ---------------------------------------------------------------------------------------


def _run_python(code: str, cache_dir: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter with NUMBA_CACHE_DIR=cache_dir; it prints JSON."""
    environ = {**os.environ, "NUMBA_CACHE_DIR": cache_dir, **env}
    environ.pop("NUMBA_DISABLE_JIT", None)
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


_COMPILED_AFTER_IMPORT = """
    import json
    import numba
    import nnkern
    from nnkern.backends import numba_backend, numba_kernels
    dispatchers = [f for f in vars(numba_kernels).values() if isinstance(f, numba.core.dispatcher.Dispatcher)]
    print(json.dumps({"dispatchers": len(dispatchers),
                      "compiled": [f.__name__ for f in dispatchers if f.signatures]}))
"""

# softmax on float32 then float64, twice each: one compilation (or cache load) per dtype
_SOFTMAX_TWICE_PER_DTYPE = """
    import json
    import numpy as np
    import nnkern
    from nnkern import ops
    from nnkern.backends import numba_kernels
    x = np.arange(12.0).reshape(3, 4)
    results = []
    for dtype in (np.float32, np.float64, np.float32, np.float64):
        results.append(ops.softmax(x.astype(dtype), backend="numba").tolist())
    stats = numba_kernels.softmax.stats
    print(json.dumps({"signatures": [str(s) for s in numba_kernels.softmax.signatures],
                      "hits": sum(stats.cache_hits.values()),
                      "misses": sum(stats.cache_misses.values()),
                      "result": results[-1]}))
"""


def test_importing_the_backend_compiles_nothing(tmp_path):
    report = _run_python(_COMPILED_AFTER_IMPORT, str(tmp_path))
    assert report["dispatchers"] > 20
    assert report["compiled"] == []
    assert not any(tmp_path.rglob("*.nbi")), "importing wrote to the Numba cache"


def test_fresh_cache_then_warm_cache(tmp_path):
    want = ops.softmax(np.arange(12.0).reshape(3, 4), backend="numpy").tolist()
    cold = _run_python(_SOFTMAX_TWICE_PER_DTYPE, str(tmp_path))
    assert len(cold["signatures"]) == 2  # float32 and float64, C-contiguous only
    assert cold["hits"] == 0 and cold["misses"] == 2
    assert any(tmp_path.rglob("*.nbi")) and any(tmp_path.rglob("*.nbc"))
    warm = _run_python(_SOFTMAX_TWICE_PER_DTYPE, str(tmp_path))
    assert warm["hits"] == 2 and warm["misses"] == 0
    for report in (cold, warm):
        np.testing.assert_allclose(report["result"], want, rtol=1e-12)


def test_kernels_work_without_any_writable_cache_location(tmp_path):
    """NUMBA_CACHE_DIR under a regular file cannot be created (even by root); with the
    other locations switched off, Numba has nowhere to cache and the backend compiles in
    memory instead of failing."""
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    report = _run_python(_SOFTMAX_TWICE_PER_DTYPE, str(blocker / "cache"),
                         NUMBA_CACHE_LOCATOR_CLASSES="UserProvidedCacheLocator")
    want = ops.softmax(np.arange(12.0).reshape(3, 4), backend="numpy").tolist()
    np.testing.assert_allclose(report["result"], want, rtol=1e-12)
    assert report["hits"] == 0


def test_entry_points_compile_for_c_contiguous_arrays_only():
    """The backend hands its kernels C-contiguous arrays even for strided or transposed
    inputs, so each kernel has at most one specialisation per dtype."""
    rng = np.random.default_rng(5)
    base = rng.standard_normal((40, 30))
    for dtype in DTYPES:
        x = base.astype(dtype)
        ops.matmul(x[::2, ::3], x[5:15, ::2], backend="numba")  # strided views
        ops.matmul(x.T, x, backend="numba")  # an F-contiguous view
        ops.activation("tanh", x[:, ::2], backend="numba")
    k_ = _kernels()
    for kernel in (k_.gemm, k_.gemm_columns, k_.activation):
        for signature in kernel.signatures:
            layouts = {arg.layout for arg in signature if hasattr(arg, "layout")}
            assert layouts <= {"C"}, (kernel.__name__, signature)


# The fused step (dense input, then sparse input and weighted rows; 1 and 2 threads each),
# then the layer path, in float32 and a fresh cache: the signatures each kernel is compiled for
_FUSED_STEPS_AND_LAYER_PATH = """
    import json
    import numpy as np
    from numba.core import event
    import nnkern
    from nnkern import engine, nn, ops, optim

    compiled = {}

    class Record(event.Listener):
        def on_start(self, ev):
            compiled.setdefault(ev.data["dispatcher"].py_func.__qualname__, []).append(
                [type(arg).__name__ for arg in ev.data["args"]])

        def on_end(self, ev):
            pass

    event.register("numba:compile", Record())
    rng = np.random.default_rng(3)
    x = rng.standard_normal((40, 12)).astype(np.float32)
    x[x < 1] = 0  # mostly zeros (84%): the sparse first layer
    y = np.arange(40) % 3
    sparse = []
    for data, weights in ((x + 1, None), (x, np.full(20, 1 / 20))):  # dense, then sparse and weighted
        model = nn.Sequential(nn.Linear(12, 6, seed=0), nn.Sigmoid(), nn.Linear(6, 3, seed=1),
                              backend="numba", dtype=np.float32)
        step = engine.fused_train_step(model, optim.Adam(model, lr=0.01), nn.CrossEntropyLoss(), data, y, 20)
        sparse.append(bool(step.sparse_input))
        for threads in (1, 2):
            nnkern.set_num_threads(threads)
            step(data[:20], y[:20], weights)
    ops.linear(x, x[:12, :5].copy(), np.zeros(5, np.float32), activation="relu", backend="numba")
    ops.matmul(x, x[:12, :5].copy(), backend="numba")
    print(json.dumps({"sparse": sparse, "compiled": compiled}))
"""


def test_kernels_compile_once_per_dtype_whoever_calls_them(tmp_path):
    """Kernels reach each other with run-time flags and codes, never constants (which Numba
    types as Literals, compiling a kernel once per value): in a fresh cache, the fused
    steps and the layer path compile each kernel once, the GEMM and the parallel update
    included (one kernel each, whatever the thread count), and the fused step once per
    combination of None arguments. The one constant is the update rule, a compile-time
    choice: Adam's steps compile Adam's update kernel and no other rule's."""
    from nnkern.backends import numba_train

    report = _run_python(_FUSED_STEPS_AND_LAYER_PATH, str(tmp_path))
    assert report["sparse"] == [False, True]
    compiled = report["compiled"]
    for name, signatures in compiled.items():
        for argument_types in signatures:
            literals = [t for t in argument_types if t.endswith("Literal")]
            if name in ("_update_any", "_update"):  # the rule's code, their first argument
                assert argument_types[0] == "IntegerLiteral" and len(literals) == 1, (name, argument_types)
            elif name.startswith("getitem_literal_idx"):  # Numba's lookup of it in RULE_UPDATES
                assert argument_types == ["NamedTuple", "IntegerLiteral"], argument_types
            else:
                assert not literals, (name, argument_types)
    for name in ("gemm", "gemm_columns", "_pack_panel", "activation", "_update_any", "_update",
                 "_sparse_linear", "_sparse_weight_grad"):
        assert len(compiled[name]) == 1, (name, compiled[name])
    steps = compiled["train_step_for.<locals>.train_step"]
    assert len(steps) == 2, steps  # dense; sparse and weighted
    rules = {update.__name__ for update in numba_train.RULE_UPDATES}
    assert rules & set(compiled) == {"_adam"}
    updates = {name for name in compiled if name.endswith("_update") and name != "_update"}
    assert updates == {"adam_update", "adamw_update", "sgd_update"}  # sgd_update: the L2 term


# A first fit with SGD momentum (the fused step of that rule), in the given cache: whether
# the rule's step came from the disk cache, and the epochs' losses
_FIT_WITH_MOMENTUM = """
    import json
    import numpy as np
    from nnkern import nn, optim
    from nnkern.backends import numba_train
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((24, 5)).astype(np.float32), np.arange(24) % 3
    model = nn.Sequential(nn.Linear(5, 4, seed=0), nn.ReLU(), nn.Linear(4, 3, seed=1),
                          backend="numba", dtype=np.float32)
    history = model.fit(x, y, epochs=2, batch_size=8, optimizer=optim.SGD(lr=0.1, momentum=0.9),
                        seed=0, verbose=False)
    stats = numba_train.train_step_for(numba_train.RULE_MOMENTUM).stats
    print(json.dumps({"hits": sum(stats.cache_hits.values()), "misses": sum(stats.cache_misses.values()),
                      "losses": history.history["loss"]}))
"""


def test_each_rules_step_is_cached_on_disk(tmp_path):
    """The step of a rule is a closure over the rule's code: Numba caches it like any kernel,
    so a second process loads it instead of compiling it, and trains the same."""
    cold = _run_python(_FIT_WITH_MOMENTUM, str(tmp_path))
    assert cold["hits"] == 0 and cold["misses"] == 1
    warm = _run_python(_FIT_WITH_MOMENTUM, str(tmp_path))
    assert warm["hits"] == 1 and warm["misses"] == 0
    assert warm["losses"] == cold["losses"]


# ---------------------------------------------------------------------------------------
# Property tests
# ---------------------------------------------------------------------------------------

PROPERTIES = settings(max_examples=40, deadline=None)


def _gemm_dims():
    """Sizes near the tile and around zero remainders, and a few past the k block."""
    tile = _kernels().GEMM_MR
    return st.one_of(st.integers(1, 4 * tile + 1), st.integers(1, 80))


@PROPERTIES
@given(m=_gemm_dims(), k=st.one_of(_gemm_dims(), st.integers(1020, 1030)), n=_gemm_dims(),
       trans_a=st.booleans(), trans_b=st.booleans(), dtype=st.sampled_from(DTYPES),
       seed=st.integers(0, 2**32 - 1))
def test_property_gemm_matches_exact_product_and_rows_are_independent(m, k, n, trans_a, trans_b, dtype, seed):
    rng = np.random.default_rng(seed)
    a, b = _operands(rng, m, k, n, dtype, trans_a, trans_b)
    c = ops.matmul(a, b, trans_a=trans_a, trans_b=trans_b, backend="numba")
    a_op, b_op = (a.T if trans_a else a), (b.T if trans_b else b)
    assert_matmul_close(c, a_op, b_op)
    # a row of the result depends on that row of op(a) only: a smaller batch gives the
    # same rows bit for bit (tiles repeat the last row instead of reading a neighbour)
    rows = max(m // 2, 1)
    part = ops.matmul(np.ascontiguousarray(a_op[:rows]), b, trans_b=trans_b, backend="numba")
    np.testing.assert_array_equal(part, c[:rows])


@PROPERTIES
@given(n=st.integers(1, 40), c=st.integers(1, 40), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([0.01, 1.0, 20.0, 300.0]), shift=st.floats(-50, 50),
       seed=st.integers(0, 2**32 - 1))
def test_property_softmax_cross_entropy(n, c, dtype, scale, shift, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, c)) * scale).astype(dtype)
    labels = rng.integers(0, c, size=n)
    loss, d = ops.softmax_cross_entropy(logits, labels, backend="numba")
    loss_ref, d_ref = ops.softmax_cross_entropy(logits, labels, backend="numpy")
    assert_close(loss, loss_ref, dtype, scale=scale, factor=16)
    assert_close(d, d_ref, dtype, scale=1.0 / n, factor=16)
    assert loss >= -np.finfo(dtype).eps * scale
    # each row of the gradient sums to zero: (softmax - one_hot) / n
    np.testing.assert_allclose(d.astype(np.float64).sum(axis=1), 0.0, atol=8 * c * np.finfo(dtype).eps / n)
    # one-hot targets give the same loss and gradient as the labels
    one_hot = np.eye(c, dtype=dtype)[labels]
    loss_t, d_t = ops.softmax_cross_entropy(logits, one_hot, backend="numba")
    assert_close(loss_t, loss, dtype, scale=scale, factor=16)
    assert_close(d_t, d, dtype, scale=1.0 / n, factor=16)
    # adding a constant to every logit of a row changes nothing (beyond rounding the shift)
    shifted = (logits.astype(np.float64) + shift).astype(dtype)
    loss_s, _ = ops.softmax_cross_entropy(shifted, labels, backend="numba")
    loss_s_ref, _ = ops.softmax_cross_entropy(shifted, labels, backend="numpy")
    assert_close(loss_s, loss_s_ref, dtype, scale=scale + abs(shift), factor=16)
