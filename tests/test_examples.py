"""Every script in examples/ runs, and does what its docstring claims, at small settings."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
MNIST = str(ROOT / "data" / "mnist")


def load_example(name):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("backend", ["numpy", None])
def test_fit_polynomial_recovers_the_coefficients(backend):
    example = load_example("fit_polynomial")
    w1, w2, w3 = example.main(steps=400, backend=backend, log_every=0)
    np.testing.assert_allclose((w1, w2, w3), example.TRUE_COEFFICIENTS, atol=0.05)


def test_rule_x0_gt_x4_is_learned():
    accuracy = load_example("rule_x0_gt_x4").main(n_train=1000, n_test=500, epochs=10)
    assert accuracy >= 0.97


def test_two_layer_net_learns_mnist():
    model, history = load_example("two_layer_net").main(epochs=2, limit=3000, data=MNIST)
    curves = history.history
    assert curves["loss"][1] < curves["loss"][0]
    assert curves["val_accuracy"][-1] > 0.7
    assert [layer.W.shape for layer in model.layers[::2]] == [(784, 100), (100, 10)]


def test_save_load_predict_round_trip(tmp_path):
    path = tmp_path / "model.npz"
    accuracy, identical = load_example("save_load_predict").main(str(path), limit=2000, data=MNIST)
    assert path.is_file()
    assert identical
    assert accuracy > 0.7


def test_residual_mnist_learns_and_runs_as_a_script(tmp_path):
    """A short run (the documented full run reaches >= 98%: README.md)."""
    model, history, accuracy = load_example("residual_mnist").main(epochs=1, limit=3000, data=MNIST, verbose=False)
    assert accuracy > 0.85 and history.history["val_accuracy"][-1] == accuracy
    assert [node.name for node in model.nodes if node.layer is not None][-2:] == ["residual", "logits"]
    result = subprocess.run([sys.executable, str(EXAMPLES / "residual_mnist.py"), "--epochs", "1", "--limit", "1000",
                             "--data", MNIST, "--plot", str(tmp_path / "graph.png")],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^test accuracy \d\d\.\d\d%$", result.stdout, re.MULTILINE)
    assert (tmp_path / "graph.png").is_file()


def test_numpy_forward_agrees_with_torch_and_nnkern():
    differences = load_example("numpy_vs_torch_forward").main(batch=7)
    assert differences["nnkern"] < 1e-12
    if differences["torch"] is None:
        pytest.skip("PyTorch is not installed")
    assert differences["torch"] < 1e-12


def test_numpy_vs_torch_without_torch_skips_gracefully(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    differences = load_example("numpy_vs_torch_forward").main(batch=3)
    assert differences["torch"] is None and differences["nnkern"] < 1e-12
    assert "comparison with torch skipped" in capsys.readouterr().out


@pytest.mark.parametrize("name, expected", [
    ("fit_polynomial", "learned  y = 1.99"),  # 1.992 with the script's noise, 2 without
    ("rule_x0_gt_x4", "test accuracy 99."),
])
def test_runs_as_a_script(name, expected):
    result = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py")], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout
