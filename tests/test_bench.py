"""nnkern.bench (the engine of ``nnkern bench``) on a tiny configuration: the structure of its
JSON, its table and its chart, the per-kernel profile, and the FLOP count it reports."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import nnkern
from nnkern import bench
from nnkern.backends import BACKENDS

TINY = {"samples": 300, "repeats": 1, "peak_size": 128, "test_samples": 500, "warmup_batches": 1}
REPO = Path(__file__).resolve().parents[1]
# The bench treats every backend alike; numba is left out here because compiling its
# kernels on first use takes seconds each (they are proven by the kernel tests).
BENCHED = [b for b in ("numpy", "cython") if b in nnkern.available_backends()]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    """``nnkern bench --quick --json --plot --profile`` with the quick settings made tiny."""
    out = tmp_path_factory.mktemp("bench")
    args = argparse.Namespace(quick=True, json=str(out / "bench.json"), plot=str(out / "bench.png"),
                              backends=",".join([*BENCHED, "torch"]), repeats=None, threads=None, profile=True)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(bench.command, "QUICK", TINY)
        mp.setattr(bench.machine, "POOL_IDLE_PAUSE_S", 0.0)
        mp.setattr(bench.command, "PROFILE_STEPS", {"quick": 2, "full": 2})
        status = bench.run_cli(args)
    return status, out, printed.getvalue()


def test_cli_writes_json_with_every_contender(cli_run):
    status, out, _ = cli_run
    assert status == 0
    result = json.loads((out / "bench.json").read_text())
    assert result["schema"] == bench.SCHEMA
    assert result["machine"]["cores"] >= 1 and isinstance(result["machine"]["simd"], list)
    assert result["versions"]["numpy"] == np.__version__
    assert result["config"]["threads"] == nnkern.get_num_threads()
    assert result["config"]["repeats"] == 1 and result["config"]["samples_per_repeat"] == 300
    assert result["peak"]["gflops"] == max(result["peak"]["blas_gflops"], result["peak"].get("nnkern_gflops", 0)) > 0
    assert set(result["peaks"]) == {"float32"} and result["peaks"]["float32"] == result["peak"]

    assert [n["name"] for n in result["networks"]] == [n.name for n in bench.NETWORKS]
    # every built-in network on MNIST's [0, 1] pixels (mostly zeros) and on dense [-1, 1] inputs
    assert [(n["name"], n["normalize"]) for n in result["networks"]] == [
        (name, scaling) for name in dict.fromkeys(n.name for n in bench.NETWORKS) for scaling in ("unit", "symmetric")]
    for network in result["networks"]:
        assert network["failed"] == {}
        names = [r["contender"] for r in network["results"]]
        assert names == BENCHED + (["torch"] if "torch" not in result["skipped"] else [])
        for row in network["results"]:
            assert len(row["times_s"]) == 1 and row["median_s"] > 0
            assert row["samples_per_s"] == pytest.approx(network["samples_trained"] / row["median_s"])
            assert row["gflops"] == pytest.approx(row["samples_per_s"] * network["flops_per_sample"] / 1e9)
            assert row["fraction_of_peak"] == pytest.approx(row["gflops"] / result["peak"]["gflops"])
            if "torch" not in result["skipped"]:
                torch_row = next(r for r in network["results"] if r["contender"] == "torch")
                assert row["ratio_to_torch"] == pytest.approx(row["samples_per_s"] / torch_row["samples_per_s"])
            assert isinstance(row["test_accuracy"], float) and 0.0 <= row["test_accuracy"] <= 1.0
            assert math.isfinite(row["final_train_loss"])
            assert row["loss_matches_reference"] is True, f"{row['contender']}: {row['warmup_loss']}"
        reference = next(r for r in network["results"] if r["contender"] == "numpy")
        assert reference["ratio_to_reference"] == 1.0


def test_cli_prints_the_table_and_draws_the_chart(cli_run):
    _, out, printed = cli_run
    result = json.loads((out / "bench.json").read_text())
    assert bench.format_report(result) in printed
    assert "samples/s" in printed and "vs numpy" in printed and "vs torch" in printed and "test acc" in printed
    assert "inputs in [0, 1]" in printed and "inputs in [-1, 1]" in printed
    assert f"{result['machine']['cpu']}, {result['machine']['cores']} cores" in printed
    for network in result["networks"]:
        assert network["name"] in printed
        for row in network["results"]:
            assert f"\n{row['contender']:<10} " in printed
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_accounts_for_the_whole_step(cli_run):
    _, out, printed = cli_run
    profiles = json.loads((out / "bench.json").read_text())["profile"]
    layered = [p for p in profiles if p["engine"] == "layer by layer"]
    assert {(p["network"], p["backend"]) for p in layered} == {(n.name, b) for n in bench.NETWORKS for b in BENCHED}
    for p in layered:
        calls = " ".join(k["call"] for k in p["kernels"])
        for kernel in ("linear", "softmax_cross_entropy", "matmul", "sgd_update"):
            assert kernel in calls, f"{kernel} missing from the profile of {p['network']} on {p['backend']}"
    # the fused Cython step, phase by phase: a forward and a backward phase per layer and the
    # loss (or, with row chains, one phase for the forward, the loss and the later layers'
    # input gradients, and one for the weight gradients); the first layer's update inside
    # its backward phase
    fused = [p for p in profiles if p["engine"] == "fused step"]
    assert {(p["network"], p["backend"]) for p in fused} == {(n.name, "cython") for n in bench.NETWORKS
                                                             if "cython" in BENCHED}
    for p in fused:
        network = next(n for n in bench.NETWORKS if n.name == p["network"])
        if p["kernels"][0]["call"].startswith("forward of every layer and the loss"):
            assert len(p["kernels"]) == 2
            assert "x @ W (784x" in p["kernels"][0]["call"]
        else:
            assert len(p["kernels"]) == 2 * len(network.layer_shapes) + 1
            assert p["kernels"][0]["call"].startswith("forward layer 1: x @ W (784x")
            assert any(k["call"] == "softmax-cross-entropy" for k in p["kernels"])
        assert p["kernels"][-1]["call"].startswith("backward layer 1: dW (784x")
        assert "W's update" in p["kernels"][-1]["call"]
    for p in profiles:
        assert sum(k["fraction"] for k in p["kernels"]) + p["other_fraction"] == pytest.approx(1.0)
        assert all(k["s_per_step"] > 0 for k in p["kernels"])
        assert bench.format_profile(p) in printed


def test_report_script_turns_the_json_into_markdown(cli_run):
    _, out, _ = cli_run
    text = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), str(out / "bench.json")],
                          check=True, capture_output=True, text=True).stdout
    assert "| contender | samples/s (median) |" in text
    assert "| kernel call | calls | ms/step | of step |" in text


def test_useful_flops_per_sample():
    # 784-100-10: forward and weight gradient of both layers, input gradient of the second
    two_layer = bench.NETWORKS[0]
    assert two_layer.flops_per_sample == 2 * (784 * 100 + 100 * 10) * 2 + 2 * (100 * 10)


def test_backend_selection_keeps_the_reference_and_explains_the_rest():
    timed, skipped = bench.benchmark_backends()
    assert timed[0] == "numpy"
    assert set(timed) | set(skipped) == set(BACKENDS)
    assert all(isinstance(reason, str) and reason for reason in skipped.values())
    assert bench.benchmark_backends(["numba"])[0] == ["numpy"] + (["numba"] if "numba" in timed else [])
    with pytest.raises(ValueError, match="unknown backend"):
        bench.benchmark_backends(["tensorflow"])


def test_cli_refuses_an_unknown_backend(capsys):
    args = argparse.Namespace(quick=True, json=None, plot=None, backends="numpy,tensorflow",
                              repeats=None, threads=None, profile=False)
    assert bench.run_cli(args) == 2
    assert "unknown backend(s) ['tensorflow']" in capsys.readouterr().err


def test_profile_model_of_any_network():
    from nnkern import nn, optim

    model = nn.Sequential(nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, 3), backend="numpy")
    rng = np.random.default_rng(0)
    xb, yb = rng.standard_normal((11, 7)).astype(np.float32), rng.integers(0, 3, 11)
    profile = bench.profile_model(model, xb, yb, optim.Adam(model), steps=3, warmup=1)
    calls = [k["call"] for k in profile["kernels"]]
    assert calls[0] == "linear+tanh 11x7 @ 7x5"
    assert "matmul x.T @ dY (weight grad) 11x7ᵀ @ 11x5" in calls
    assert "adam_update (every parameter)" in calls
    assert next(k for k in profile["kernels"] if k["call"].startswith("adam"))["calls_per_step"] == 4
    text = bench.format_profile(profile)
    assert text.startswith("numpy: ") and "linear+tanh 11x7 @ 7x5" in text and "other (Python" in text


def test_adam_and_sgd_side_by_side(tmp_path):
    """--optimizers sgd,adam: every contender trains with both in one interleaved run; each
    Adam row carries its epoch time against the same contender's SGD time, and its warm-up
    loss is checked against the reference's Adam, not its SGD."""
    args = argparse.Namespace(quick=True, json=str(tmp_path / "b.json"), plot=None, backends=",".join(BENCHED),
                              repeats=None, threads=None, profile=False, optimizers="sgd,adam", hidden=(30,),
                              no_builtin=True)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(bench.command, "QUICK", {**TINY, "warmup_batches": 3})  # losses after 2 different updates
        mp.setattr(bench.machine, "POOL_IDLE_PAUSE_S", 0.0)
        assert bench.run_cli(args) == 0
    result = json.loads((tmp_path / "b.json").read_text())
    assert set(result["config"]["optimizers"]) == {"sgd", "adam"}
    for network in result["networks"]:
        rows = {(r["contender"], r["optimizer"]): r for r in network["results"]}
        assert set(rows) == {(b, o) for b in BENCHED for o in ("sgd", "adam")}
        for (name, optimizer), row in rows.items():
            assert row["loss_matches_reference"] is True
            sgd = rows[name, "sgd"]
            assert row["time_vs_sgd"] == pytest.approx(row["median_s"] / sgd["median_s"])
        assert rows["numpy", "adam"]["warmup_loss"] != rows["numpy", "sgd"]["warmup_loss"]
    assert "time vs SGD" in printed.getvalue()


def test_cli_refuses_an_unknown_optimizer(capsys):
    args = argparse.Namespace(quick=True, json=None, plot=None, backends="numpy", repeats=None, threads=None,
                              profile=False, optimizers="sgd,lbfgs")
    assert bench.run_cli(args) == 2
    assert "unknown lbfgs" in capsys.readouterr().err


def test_your_own_network_beside_or_instead_of_the_built_in_ones(tmp_path):
    """--hidden/--activation/--batch-size/--normalize/--dtype describe one more network (the
    rest take their defaults); --no-builtin measures it alone; float64 gets its own peak."""
    args = argparse.Namespace(quick=True, json=str(tmp_path / "mine.json"), plot=None, backends=",".join(BENCHED),
                              repeats=None, threads=None, profile=False, hidden=(32, 16), activation="tanh",
                              batch_size=50, normalize=None, dtype="float64", no_builtin=True)
    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(bench.command, "QUICK", TINY)
        mp.setattr(bench.machine, "POOL_IDLE_PAUSE_S", 0.0)
        assert bench.run_cli(args) == 0
    result = json.loads((tmp_path / "mine.json").read_text())
    [network] = result["networks"]
    assert (network["name"], network["batch_size"], network["normalize"], network["dtype"]) == (
        "784-32-16-10 tanh", 50, "symmetric", "float64")
    assert set(result["peaks"]) == {"float64"} and network["peak_gflops"] == result["peaks"]["float64"]["gflops"]
    assert [r["contender"] for r in network["results"]] == BENCHED and network["failed"] == {}
    assert all(r["loss_matches_reference"] for r in network["results"])
    assert "784-32-16-10 tanh, batch 50, inputs in [-1, 1], float64" in printed.getvalue()

    with_builtin = bench.networks_of(argparse.Namespace(hidden=None, activation="gelu", no_builtin=False))
    assert with_builtin[:-1] == list(bench.NETWORKS)
    assert with_builtin[-1] == bench.custom_network(activation="gelu")
    assert with_builtin[-1].sizes == (784, 256, 128, 64, 20, 10) and with_builtin[-1].normalize == "symmetric"


def test_cli_refuses_nothing_to_measure(capsys):
    args = argparse.Namespace(quick=True, json=None, plot=None, backends="numpy", repeats=None, threads=None,
                              profile=False, no_builtin=True)
    assert bench.run_cli(args) == 2
    assert "--no-builtin leaves nothing to measure" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown input scaling 'log'"):
        bench.custom_network(normalize="log")


def test_dense_input_scaling_is_that_of_the_source_material():
    x_unit = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    dense = bench.custom_network(normalize="symmetric", dtype="float64").data(x_unit)
    assert dense.dtype == np.float64 and dense.tolist() == [[-1.0, 0.0, 1.0]]
    assert np.array_equal(bench.NETWORKS[0].data(x_unit), x_unit)


def test_the_library_does_not_load_the_benchmark_harness():
    """``import nnkern`` and its modules leave nnkern.bench alone: only ``nnkern bench`` (or
    code that imports nnkern.bench) loads it."""
    modules = ["nnkern", "nnkern.nn", "nnkern.optim", "nnkern.data", "nnkern.cli", "nnkern.sklearn"]
    code = f"import sys\nfor name in {modules!r}:\n    __import__(name)\nprint([m for m in sys.modules if 'bench' in m])"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
