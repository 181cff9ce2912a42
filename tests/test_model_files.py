"""Model files saved before nnkern.nn was split into layers, losses, models and training
(by commit e385157) still load, with the same weights and outputs."""

from pathlib import Path

import numpy as np
import pytest

from nnkern import nn

DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("backend", ["numpy", "cython", "numba"])
def test_files_saved_before_the_split_load_and_predict_the_same(backend):
    saved = np.load(DATA / "outputs_saved_by_e385157.npz")
    seq = nn.load(DATA / "sequential_saved_by_e385157.npz", backend=backend)
    assert isinstance(seq, nn.Sequential) and seq.dtype == np.float64 and seq.backend == backend
    assert [type(layer).__name__ for layer in seq.layers] == ["Linear", "ReLU", "Linear", "LeakyReLU", "Linear",
                                                              "Dropout", "GELU", "Softmax"]
    np.testing.assert_allclose(seq.predict(saved["x"]), saved["seq"], rtol=1e-12, atol=1e-15)
    graph = nn.load(DATA / "graph_saved_by_e385157.npz", backend=backend)
    assert isinstance(graph, nn.Graph) and graph.dtype == np.float32
    outputs = graph.predict(saved["x"])
    np.testing.assert_allclose(outputs[0], saved["g0"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[1], saved["g1"], rtol=1e-5, atol=1e-6)
