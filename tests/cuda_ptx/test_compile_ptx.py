"""Each kernel the "cuda" backend launches compiles to PTX for compute capability 9.0
(H100) with the argument types it is launched with, keeps its per-thread arrays in
registers, and the float32 kernels compute in float32 (a stray Python float literal
would promote them to slow float64 arithmetic)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest
from numba import cuda

import nnkern
from nnkern.backends import cuda_kernels, cuda_train

TARGET_CC = (9, 0)

# float32 kernels whose float64 arithmetic is deliberate: loss sums are float64 as in the
# reference, binary cross entropy computes in float64 throughout like the reference, and
# so do the normalisations (statistics and normalised values, as the reference) and the
# vector norms of gradient clipping.
FLOAT64_BY_DESIGN = {
    "softmax_cross_entropy_labels",
    "softmax_cross_entropy_targets",
    "mse",
    "binary_cross_entropy",
    "batch_norm_forward",
    "batch_norm_backward",
    "layer_norm_forward",
    "layer_norm_input_grad",
    "layer_norm_parameter_grad",
    "sum_squares",
    "max_abs",
}
# The training kernels sum the loss in float64 too (row losses, the step's mean); their
# float32 GEMMs, activations and updates must not be (test_kernel_compiles_to_ptx checks).
TRAINING_KERNELS = {"train_epoch", "train_phase"}
_F64_INSTRUCTION = re.compile(r"^\s*(?!ld\.param|\.param|\.reg)[a-z][\w.]*\.f64\b", re.MULTILINE)


@pytest.fixture(scope="module")
def stand_in_device():
    """Numba compiles the device functions a kernel calls for the current device; with no
    GPU there is none, so one of TARGET_CC stands in while compiling."""
    if cuda.is_available():
        yield
        return
    patch = pytest.MonkeyPatch()
    patch.setattr(cuda.dispatcher, "get_current_device",
                  lambda: SimpleNamespace(compute_capability=TARGET_CC))
    yield
    patch.undo()


TARGETS = cuda_kernels.compile_targets() + cuda_train.compile_targets()


@pytest.mark.parametrize("name,pyfunc,argtypes", TARGETS, ids=[t[0] for t in TARGETS])
def test_kernel_compiles_to_ptx(stand_in_device, name, pyfunc, argtypes):
    ptx, return_type = cuda.compile_ptx(pyfunc, argtypes, cc=TARGET_CC)
    assert f".target sm_{TARGET_CC[0]}{TARGET_CC[1]}" in ptx
    assert ".entry" in ptx
    # local memory would mean the GEMM's register tile (or another per-thread array) was
    # not kept in registers
    assert not re.search(r"\b(ld|st)\.local", ptx), f"{name} uses local memory"
    kernel, dtype = re.fullmatch(r"(\w+)(?:\[(\w+)\])?", name).groups()
    if dtype == "float32" and kernel not in FLOAT64_BY_DESIGN | TRAINING_KERNELS:
        promoted = _F64_INSTRUCTION.findall(ptx)
        assert not promoted, f"{name} computes in float64: {promoted[:5]}"
    if dtype == "float32" and kernel in TRAINING_KERNELS:
        # float64 only where the loss is summed: adds, moves, conversions, the mean's
        # division and the isnan/isinf tests; no float64 multiply, so no promoted GEMM,
        # activation or update
        arithmetic = {op.split()[0].split(".")[0] for op in _F64_INSTRUCTION.findall(ptx)}
        assert arithmetic <= {"add", "mov", "cvt", "div", "abs", "setp", "ld", "st"}, arithmetic


def test_every_launched_kernel_is_compiled():
    """compile_targets() covers each kernel of both dtype families, and both training
    kernels."""
    names = {name for name, _, _ in TARGETS}
    for dtype in cuda_kernels.FLOAT_DTYPES:
        family = cuda_kernels.kernel_family(dtype)
        launchable = {k for k in vars(family) if k not in ("scalar", "signatures", "device")}
        assert {f"{k}[{dtype.name}]" for k in launchable} <= names
    assert "sum_reduce" in names
    assert {f"{k}[{d.name}]" for k in ("train_epoch", "train_phase") for d in cuda_kernels.FLOAT_DTYPES} <= names


def test_backend_availability_follows_the_gpu():
    """Without the simulator, "cuda" is listed exactly when a GPU works, and selecting it
    otherwise says why (in a fresh process: this one has imported numba.cuda already)."""
    code = (
        "import nnkern\n"
        "print('cuda' in nnkern.available_backends())\n"
        "try:\n"
        "    nnkern.set_backend('cuda')\n"
        "    print('selected')\n"
        "except nnkern.BackendUnavailableError as exc:\n"
        "    print(exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         check=True).stdout.splitlines()
    if cuda.is_available():
        assert out == ["True", "selected"]
    else:
        assert out[0] == "False"
        assert "no CUDA GPU found" in out[1] and "NUMBA_ENABLE_CUDASIM=1" in out[1]
