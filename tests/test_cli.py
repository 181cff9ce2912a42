"""The `nnkern` command line, run in-process through ``main([...])`` (and once as
``python -m nnkern``), on real MNIST kept small with --limit."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import pytest

import nnkern
from nnkern import cli

MNIST = str(Path(__file__).resolve().parents[1] / "data" / "mnist")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def restore_thread_count():
    """`--threads` sets the process-wide thread count: put it back for the other tests."""
    threads = nnkern.get_num_threads()
    yield
    nnkern.set_num_threads(threads)


def run(capsys, *argv):
    status = cli.main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quick `nnkern train` run (2000 images, 1 epoch) that saves a model and curves."""
    folder = tmp_path_factory.mktemp("train")
    model_path, plot_path = folder / "model.npz", folder / "curves.png"
    # capsys is function-scoped: capture this module-wide run by hand
    out, err = io.StringIO(), io.StringIO()
    threads = nnkern.get_num_threads()
    # one thread: OpenMP threads that wait for each other crawl on a busy machine
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["train", "--data", MNIST, "--limit", "2000", "--epochs", "1", "--seed", "3",
                           "--threads", "1", "--save", str(model_path), "--plot", str(plot_path)])
    nnkern.set_num_threads(threads)
    return types.SimpleNamespace(status=status, out=out.getvalue(), err=err.getvalue(),
                                 model=model_path, plot=plot_path)


def test_train_reports_each_epoch_and_a_summary(trained):
    assert trained.status == 0, trained.err
    assert "784-256-128-64-20-10 relu on 2000 MNIST images (test: 10000)" in trained.out
    assert f"backend {nnkern._backend.fastest_cpu_backend()}, float32" in trained.out
    epoch_line = re.search(r"epoch 1/1  train loss ([\d.]+) acc ([\d.]+)%  test loss ([\d.]+) acc ([\d.]+)%"
                           r"  ([\d,]+) samples/s", trained.out)
    assert epoch_line, trained.out
    summary = re.search(r"test accuracy ([\d.]+)% \(loss ([\d.]+)\); training time ([\d.]+) s", trained.out)
    assert summary, trained.out
    # the summary is the last epoch's test result; 2000 images already give a useful model
    assert summary.group(1) == epoch_line.group(4)
    assert 60.0 < float(summary.group(1)) <= 100.0


def test_train_writes_the_model_and_the_curves(trained):
    assert trained.model.stat().st_size > 100_000  # 784*256 float32 weights and more
    assert trained.plot.read_bytes().startswith(PNG_SIGNATURE)
    assert f"saved the model to {trained.model}" in trained.out


def test_evaluate_matches_the_training_summary(trained, capsys):
    status, out, _ = run(capsys, "evaluate", str(trained.model), "--data", MNIST)
    assert status == 0
    accuracy = re.search(r"test accuracy ([\d.]+)%", out).group(1)
    assert f"test accuracy {accuracy}%" in trained.out


def test_evaluate_on_another_backend_agrees(trained, capsys):
    status, out, _ = run(capsys, "evaluate", str(trained.model), "--data", MNIST, "--backend", "numpy")
    assert status == 0 and "backend numpy" in out
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", out).group(1))
    trained_accuracy = float(re.search(r"test accuracy ([\d.]+)%", trained.out).group(1))
    assert abs(accuracy - trained_accuracy) <= 0.02  # at most 2 of 10000 images on a float32 tie


def test_predict_prints_predicted_against_true_labels(trained, capsys):
    status, out, _ = run(capsys, "predict", str(trained.model), "--data", MNIST,
                         "--count", "7", "--start", "3")
    assert status == 0
    model = nnkern.nn.load(trained.model, backend="numpy")
    (_, _), (x_test, y_test) = nnkern.data.load_mnist(MNIST)
    predicted = model.predict_classes(x_test[3:10])
    assert f"Predicted: {' '.join(map(str, predicted))}" in out
    assert f"True:      {' '.join(map(str, y_test[3:10]))}" in out
    assert len(re.findall(r"^test image +\d+: predicted \d, true \d", out, re.M)) == 7
    assert f"{int(np.sum(predicted == y_test[3:10]))}/7 correct" in out


def test_missing_model_file_is_a_clear_error(tmp_path, capsys):
    status, _, err = run(capsys, "evaluate", str(tmp_path / "none.npz"), "--data", MNIST)
    assert status == 1
    assert "no model file at" in err and "Traceback" not in err


def test_corrupt_model_file_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a model")
    status, _, err = run(capsys, "predict", str(bad), "--data", MNIST)
    assert status == 1 and "not a readable nnkern model file" in err


def test_missing_data_directory_is_a_clear_error(tmp_path, capsys):
    status, _, err = run(capsys, "train", "--data", str(tmp_path / "nowhere"), "--epochs", "1")
    assert status == 1
    assert "nowhere" in err and "does not exist" in err


def test_corrupt_data_file_is_a_clear_error(tmp_path, capsys):
    for name in nnkern.data.MNIST_FILES:
        (tmp_path / f"{name}.gz").write_bytes(b"\x1f\x8b garbage")
    status, _, err = run(capsys, "train", "--data", str(tmp_path), "--epochs", "1")
    assert status == 1
    assert "corrupt gzip data" in err and "Traceback" not in err


def test_unusable_backend_says_why(capsys):
    unusable = [b for b in ("cuda", "numba", "cython") if nnkern.unavailable_reason(b)]
    if not unusable:
        pytest.skip("every backend is usable here")
    status, _, err = run(capsys, "train", "--backend", unusable[0], "--data", MNIST, "--epochs", "1")
    assert status == 1 and f"backend {unusable[0]!r} is not usable here" in err


@pytest.mark.parametrize("argv", [
    ["train", "--hidden", "256,x"],
    ["train", "--hidden", "256,0"],
    ["train", "--epochs", "0"],
    ["train", "--lr", "-1"],
    ["train", "--momentum", "1.5"],
    ["train", "--weight-decay", "-0.1"],
    ["train", "--optimizer", "lbfgs"],
    ["train", "--warmup", "-1"],
    ["train", "--validation-split", "1.0"],
    ["train", "--lr-schedule", "exponential"],
    ["predict", "m.npz", "--count", "0"],
])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage: nnkern" in capsys.readouterr().err


def test_layer_sizes_parse():
    assert cli._layer_sizes("256,128,64,20") == (256, 128, 64, 20)
    assert cli._layer_sizes("none") == ()


@pytest.mark.parametrize("name", cli.OPTIMIZERS)
def test_every_optimizer_name_builds_with_its_default_rate(name):
    optimizer = cli.make_optimizer(name)
    assert optimizer.lr == cli.DEFAULT_LR[name]
    assert (getattr(optimizer, "momentum", 0.0) > 0) == (name in ("momentum", "nesterov"))
    assert getattr(optimizer, "nesterov", False) == (name == "nesterov")


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def drive_progress(progress, steps=4):
    progress.on_train_begin({"epochs": 2, "steps": steps, "samples": 250})
    progress.on_epoch_begin(1, steps)
    for step in range(1, steps + 1):
        progress.on_batch_end(1, step, steps, {"loss": 1.0 / step, "accuracy": 0.5})
    progress.on_epoch_end(1, {"loss": 0.25, "accuracy": 0.5, "val_loss": 0.3, "val_accuracy": 0.45,
                              "seconds": 1.0})


def test_progress_bar_on_a_terminal():
    err, out = FakeTerminal(), io.StringIO()
    drive_progress(cli.TrainingProgress(err=err, out=out))
    bar = err.getvalue()
    assert "\repoch 1/2 [" + "#" * cli.TrainingProgress.BAR_WIDTH + "] 250/250" in bar
    assert bar.endswith("\r\x1b[K")  # the bar is cleared before the epoch line
    assert re.fullmatch(r"epoch 1/2  train loss 0.2500 acc 50.00%  test loss 0.3000 acc 45.00%"
                        r"  [\d,]+ samples/s  [\d.]+ s\n", out.getvalue())


def test_progress_without_a_terminal_prints_plain_lines():
    err, out = io.StringIO(), io.StringIO()
    drive_progress(cli.TrainingProgress(err=err, out=out, plain_every_s=0.0))
    lines = err.getvalue().splitlines()
    assert lines[-1] == "epoch 1/2: 250/250 samples (100%), loss 0.2500"
    assert "\r" not in err.getvalue() and "#" not in err.getvalue()
    assert out.getvalue().startswith("epoch 1/2  train loss 0.2500")


def _rates(schedule_name, steps, warmup=0, lr=0.2):
    """The rate after each of ``steps`` optimizer steps under `nnkern train`'s schedule."""
    optimizer = cli.make_optimizer("sgd", lr)
    optimizer.schedule = cli.make_schedule(schedule_name, steps, warmup)
    rates = []
    for step in range(1, steps + 1):
        if optimizer.schedule is not None:
            optimizer.schedule.on_batch_end(1, step, steps, {"loss": 1.0})
        rates.append(optimizer.lr)
    return np.array(rates)


def test_linear_decay_reaches_zero_at_the_last_step():
    np.testing.assert_allclose(_rates("linear", 10), 0.2 * (1 - np.arange(1, 11) / 10), atol=1e-15)


def test_cosine_decay_and_warmup():
    np.testing.assert_allclose(_rates("cosine", 8), 0.1 * (1 + np.cos(np.pi * np.arange(1, 9) / 8)), atol=1e-15)
    rates = _rates("linear", 10, warmup=4)
    np.testing.assert_allclose(rates[:4], 0.2 * np.array([0.4375, 0.625, 0.8125, 1.0]))  # from lr/4 up to lr
    np.testing.assert_allclose(rates[4:], 0.2 * (1 - np.arange(1, 7) / 6), atol=1e-15)
    np.testing.assert_allclose(_rates("constant", 6, warmup=2), 0.2 * np.array([0.75, 1, 1, 1, 1, 1]))
    assert cli.make_schedule("constant", 5) is None
    with pytest.raises(cli.CommandError, match="--warmup 5 must be fewer than the 5 steps"):
        cli.make_schedule("linear", 5, warmup=5)


@pytest.fixture
def no_training(monkeypatch):
    """Fails a test that gets as far as loading the data (i.e. would train)."""
    monkeypatch.setattr(cli, "_load_mnist", lambda *args: pytest.fail("the command went on to load MNIST"))


@pytest.mark.parametrize("argv, message", [
    (["--save", "{tmp}/missing/dir/m.npz"],
     "--save {tmp}/missing/dir/m.npz: the folder {tmp}/missing/dir does not exist"),
    (["--save", "{tmp}"], "--save {tmp}: is a folder"),
    (["--plot", "{tmp}/file.txt/curves.png"], "--plot {tmp}/file.txt/curves.png: {tmp}/file.txt is not a folder"),
    (["--save", "{tmp}/m.npz", "--plot", "{tmp}/m.npz"], "--save and --plot both write {tmp}/m.npz"),
    (["--early-stopping", "2", "--validation-split", "0"], "--early-stopping needs --validation-split above 0"),
])
def test_bad_outputs_fail_before_training(argv, message, tmp_path, capsys, no_training):
    (tmp_path / "file.txt").write_text("a file, not a folder")
    status, out, err = run(capsys, "train", *[a.format(tmp=tmp_path) for a in argv])
    assert status == 1 and "Traceback" not in err
    assert f"nnkern train: error: {message.format(tmp=tmp_path)}" in err
    assert out == ""


def test_a_folder_that_takes_no_files_fails_before_training(tmp_path, monkeypatch, capsys, no_training):
    def refuse(*args, **kwargs):  # what a read-only folder does (root would write anyway)
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(nnkern._paths.tempfile, "mkstemp", refuse)
    status, out, err = run(capsys, "train", "--save", str(tmp_path / "m.npz"))
    assert status == 1 and out == ""
    assert f"--save {tmp_path / 'm.npz'}: cannot create files in {tmp_path} (Permission denied)" in err


def test_bench_checks_its_outputs_before_running(tmp_path, monkeypatch, capsys):
    fake = types.ModuleType("nnkern.bench")
    fake.run_cli = lambda args: pytest.fail("the benchmark ran")
    monkeypatch.setitem(sys.modules, "nnkern.bench", fake)
    status, _, err = run(capsys, "bench", "--quick", "--json", str(tmp_path / "no" / "out.json"))
    assert status == 1 and f"--json {tmp_path / 'no' / 'out.json'}: the folder" in err
    status, _, err = run(capsys, "bench", "--quick", "--plot", str(tmp_path / "chart.xyz"))
    assert status == 1 and "named by their ending (e.g. bench.png)" in err


def test_a_failed_save_after_training_keeps_the_model(tmp_path, monkeypatch, capsys):
    """The folder vanishes (or the disk fills) during training: the model goes to the
    temporary folder, and the message says where."""
    target = tmp_path / "model.npz"
    real_save = nnkern.nn.Sequential.save

    def save_failing_at_the_target(model, path):
        if os.fspath(path) == str(target):
            raise OSError(28, "No space left on device")
        real_save(model, path)

    monkeypatch.setattr(nnkern.nn.Sequential, "save", save_failing_at_the_target)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the fallback goes
    status, out, err = run(capsys, "train", "--data", MNIST, "--limit", "300", "--epochs", "1", "--hidden", "16",
                           "--threads", "1", "--save", str(target))
    assert status == 1 and "Traceback" not in err
    assert f"could not save the model to {target} (OSError: [Errno 28] No space left on device)" in err
    fallback = re.search(r"the trained model was saved to (\S+) instead; move it where you want it: mv \S+ (\S+)",
                         err)
    assert fallback and fallback.group(2) == str(target), err
    restored = nnkern.nn.load(fallback.group(1), backend="numpy")
    assert [p.shape for p in restored.parameters()] == [(784, 16), (16,), (16, 10), (10,)]
    assert "test accuracy" in out


def test_threads_above_the_cores_are_lowered_with_a_warning(monkeypatch, capsys):
    monkeypatch.delenv("NNKERN_ALLOW_OVERSUBSCRIPTION", raising=False)
    usable = nnkern._threads.default_num_threads()
    argv = ["train", "--data", MNIST, "--limit", "200", "--epochs", "1", "--hidden", "8",
            "--threads", str(usable + 62)]
    status, out, err = run(capsys, *argv)
    assert status == 0, err
    assert (f"nnkern train: warning: --threads {usable + 62} is more than the {usable} core(s) this process may "
            f"use; using {usable} threads") in err
    assert f"{usable} thread(s)" in out
    status, out, err = run(capsys, *argv[:-1], str(usable + 1), "--oversubscribe")
    assert status == 0 and "warning" not in err
    assert f"{usable + 1} thread(s)" in out


def test_bench_threads_are_capped_too(monkeypatch, capsys):
    monkeypatch.delenv("NNKERN_ALLOW_OVERSUBSCRIPTION", raising=False)
    received = []
    fake = types.ModuleType("nnkern.bench")
    fake.run_cli = lambda args: received.append(args.threads) or 0
    monkeypatch.setitem(sys.modules, "nnkern.bench", fake)
    usable = nnkern._threads.default_num_threads()
    status, _, err = run(capsys, "bench", "--quick", "--threads", "64")
    assert status == 0 and received == [min(64, usable)]
    assert ("warning: --threads 64 is more than" in err) == (usable < 64)


def test_early_stopping_holds_out_validation_images(capsys):
    status, out, err = run(capsys, "train", "--data", MNIST, "--limit", "500", "--epochs", "2", "--hidden", "16",
                           "--threads", "1", "--early-stopping", "1", "--optimizer", "adamw",
                           "--lr-schedule", "cosine", "--warmup", "3")
    assert status == 0, err
    assert "on 450 MNIST images (test: 10000, validation: the last 50 training images)" in out
    assert "optimizer adamw lr 0.001 warmed up over 3 steps, on a cosine to 0" in out
    assert re.search(r"^epoch 1/2  train loss [\d.]+ acc [\d.]+%  val loss [\d.]+ acc [\d.]+%", out, re.M)
    assert re.search(r"^test accuracy [\d.]+%", out, re.M)


def test_small_custom_network_trains_with_adam(tmp_path, capsys):
    status, out, err = run(capsys, "train", "--data", MNIST, "--limit", "1000", "--epochs", "2",
                           "--hidden", "32", "--activation", "tanh", "--optimizer", "adam",
                           "--batch-size", "50", "--dtype", "float64", "--backend", "numpy",
                           "--lr-schedule", "constant", "--weight-decay", "0", "--threads", "1")
    assert status == 0, err
    assert "784-32-10 tanh on 1000 MNIST images" in out and "float64" in out
    assert "optimizer adam lr 0.001 constant, weight decay 0, batch 50, 2 epoch(s)" in out
    assert len(re.findall(r"^epoch \d/2 ", out, re.M)) == 2
    assert "1 thread(s)" in out


def test_info_in_process(capsys):
    status, out, _ = run(capsys, "info")
    assert status == 0
    assert f"nnkern {nnkern.__version__}" in out and f"numpy {np.__version__}" in out
    for name in nnkern._backend.BACKENDS:
        reason = nnkern.unavailable_reason(name)
        assert re.search(rf"^  {name} +{'available' if reason is None else 'unavailable: '}", out, re.M)
    assert f"nnkern.get_num_threads() = {nnkern.get_num_threads()}" in out
    assert "CPU: " in out and "numpy BLAS: " in out
    if nnkern.unavailable_reason("cython") is None:
        assert re.search(r"^  cython GEMM: .+ tiles, (native|portable) build", out, re.M)


def test_info_as_a_module_in_a_subprocess():
    result = subprocess.run([sys.executable, "-m", "nnkern", "info"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert "backends:" in result.stdout and "numpy  available" in result.stdout


def test_bench_passes_its_arguments_to_the_bench_module(monkeypatch, capsys):
    received = []
    fake = types.ModuleType("nnkern.bench")
    fake.run_cli = lambda args: received.append(args) or 0
    monkeypatch.setitem(sys.modules, "nnkern.bench", fake)
    status, _, _ = run(capsys, "bench", "--quick", "--json", "out.json", "--backends", "numpy,cython",
                       "--repeats", "3", "--threads", "2", "--plot", "bench.png")
    assert status == 0
    (args,) = received
    assert (args.quick, args.json, args.backends, args.repeats, args.threads, args.plot) == (
        True, "out.json", "numpy,cython", 3, 2, "bench.png")


def test_bench_without_its_module_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "nnkern.bench", None)  # makes the import fail
    status, _, err = run(capsys, "bench", "--quick")
    assert status == 1
    assert "no module nnkern.bench" in err and "Traceback" not in err


def test_plot_commands_write_pngs(tmp_path, capsys):
    status, out, _ = run(capsys, "plot-optimizers", str(tmp_path / "opt.png"), "--steps", "10")
    assert status == 0 and (tmp_path / "opt.png").read_bytes().startswith(PNG_SIGNATURE)
    assert re.search(r"^Adam +ends at", out, re.M)
    status, out, _ = run(capsys, "plot-gradient-descent", str(tmp_path / "gd.png"))
    assert status == 0 and (tmp_path / "gd.png").read_bytes().startswith(PNG_SIGNATURE)
    assert "(too large)" in out


def test_plot_without_matplotlib_says_how_to_install(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, _, err = run(capsys, "plot-optimizers", str(tmp_path / "opt.png"))
    assert status == 1 and "pip install nnkern[plot]" in err


@pytest.mark.slow
def test_defaults_reach_98_percent_on_mnist(capsys):
    """The accuracy gate: `nnkern train` with every default reaches 98.0% test accuracy."""
    status, out, err = run(capsys, "train", "--data", MNIST)
    assert status == 0, err
    accuracy = float(re.search(r"^test accuracy ([\d.]+)%", out, re.M).group(1))
    assert accuracy >= 98.0, out
