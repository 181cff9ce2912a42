"""nnkern.interop on a "cuda" model (parameters and running statistics in device memory):
its ONNX export run by onnxruntime, and its torch conversion, against its predict; and
from_torch onto "cuda"."""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import interop, nn
from nnkern.normalization import BatchNorm1d, LayerNorm

ort = pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")


def test_cuda_model_to_onnx_and_torch_and_back():
    model = nn.Sequential(nn.Linear(6, 8, seed=0), BatchNorm1d(8), nn.GELU(), nn.Linear(8, 5, seed=1),
                          LayerNorm(5), nn.Sigmoid(), nn.Linear(5, 3, seed=2), backend="cuda", dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((9, 6))
    model.forward(x, training=True)  # running statistics off their initial values
    want = model.predict(x)
    session = ort.InferenceSession(interop.to_onnx(model).SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"input": x})[0], want, rtol=1e-6, atol=1e-9)  # GELU's erf: float32
    module = interop.to_torch(model.eval())  # the module takes the model's mode
    with torch.no_grad():
        np.testing.assert_allclose(module(torch.from_numpy(x)).numpy(), want, rtol=1e-12, atol=1e-14)
    back = interop.from_torch(module, backend="cuda")
    np.testing.assert_allclose(back.predict(x), want, rtol=1e-12, atol=1e-14)
