"""The ``nnkern`` command line.

    nnkern train [--hidden 256,128,64,20] [--optimizer momentum] [--epochs 5] ...
    nnkern evaluate MODEL.npz
    nnkern predict MODEL.npz [--count 10]
    nnkern info
    nnkern tune [--hidden 256,128,64,20] [--batch-size 64] [--inputs sparse,dense] ...
    nnkern bench [--quick] [--json PATH]
    nnkern plot-optimizers PATH.png
    nnkern plot-gradient-descent PATH.png

``main(argv)`` runs one command in-process and returns its exit status (0 on success,
1 when the command fails, 2 for bad arguments), so tests and scripts can call it directly.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import os
import platform
import sys
import tempfile
import time
from importlib import metadata

import numpy as np

import nnkern
from . import _validate
from ._backend import BackendUnavailableError, fastest_cpu_backend
from ._builders import (
    DEFAULT_HIDDEN,
    DEFAULT_LR,
    DEFAULT_MOMENTUM,
    HIDDEN_ACTIVATIONS,
    INPUT_FEATURES,
    NUM_CLASSES,
    OPTIMIZERS,
    build_mlp,
    make_optimizer,
)

__all__ = ["main", "build_parser", "build_mlp", "make_optimizer", "make_schedule", "TrainingProgress"]

ACTIVATIONS = tuple(HIDDEN_ACTIVATIONS)
LR_SCHEDULES = ("linear", "cosine", "constant")
# The defaults of `nnkern train`: SGD with momentum 0.9, lr 0.05 decayed linearly to 0
# after every step, L2 weight decay 1e-3, batch 64, 4 epochs. Measured on MNIST with the
# default network (cython backend, float32): 98.27%, 98.17%, 98.21%, 98.20% test accuracy
# for seeds 0-3. Without weight decay 4 epochs gave 97.93-98.11% and 5 epochs 98.02-98.21%;
# with a constant rate (PyTorch replica) it stayed below 97.8% after 4-6 epochs.
DEFAULT_OPTIMIZER = "momentum"
DEFAULT_BATCH_SIZE = 64
DEFAULT_EPOCHS = 4
DEFAULT_WEIGHT_DECAY = 1e-3
SIMD_FLAGS = ("sse2", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
              "avx512_vnni", "avx512_bf16", "amx_tile", "neon", "asimd", "sve")


class CommandError(Exception):
    """A failure the user can fix (missing file, unusable backend): printed without a traceback."""


# ---------------------------------------------------------------------------------------
# Building blocks shared by the commands (and the examples)
# ---------------------------------------------------------------------------------------


def _number_type(convert, expected: str, not_a_number: str | None = None, **bounds):
    """An argparse type: the text as convert (int or float) makes it, refused unless
    :func:`nnkern._validate.integer` (for int) or ``real`` (finite, for float) accepts it
    within the bounds; the errors read "expected <expected> (or <not_a_number> when the text
    is no number), got <text>"."""
    check = _validate.integer if convert is int else _validate.real

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {not_a_number or expected}, got {text!r}") from None
        try:
            return check("", "", value, **bounds)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}") from None

    return parse


_positive_int = _number_type(int, "a positive integer", minimum=1)
_nonnegative_int = _number_type(int, "an integer >= 0", minimum=0)
_positive_float = _number_type(float, "a positive number", "a number", low=0, low_open=True)
_nonnegative_float = _number_type(float, "a number >= 0", "a number", low=0)
_fraction = _number_type(float, "a fraction in [0, 1)", "a number", low=0, high=1, high_open=True)


def _layer_sizes(text: str) -> tuple[int, ...]:
    """--hidden "256,128,64,20" as (256, 128, 64, 20); "" or "none" means no hidden layer."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer sizes such as 256,128,64,20, got {text!r}"
        ) from None
    if any(size < 1 for size in sizes):
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def _input_kinds(text: str) -> tuple[str, ...]:
    """tune's --inputs "sparse,dense" as ("sparse", "dense")."""
    kinds = tuple(dict.fromkeys(part.strip() for part in text.split(",")))
    if not kinds or any(kind not in ("sparse", "dense") for kind in kinds):
        raise argparse.ArgumentTypeError(f"expected sparse, dense or sparse,dense, got {text!r}")
    return kinds


def _load_mnist(path, dtype=np.float32):
    from .data import load_mnist

    try:
        return load_mnist(path, dtype=dtype)
    except (FileNotFoundError, ValueError) as exc:  # missing, or corrupt (the message names the file)
        raise CommandError(str(exc)) from None


def _load_model(path, backend):
    from . import nn

    if not os.path.isfile(path):
        raise CommandError(f"no model file at {path} (create one with: nnkern train --save {path})")
    try:
        return nn.load(path, backend=backend)
    except nn.ModelFileError as exc:
        raise CommandError(str(exc)) from None


def _check_backend(name: str | None) -> str:
    name = name or fastest_cpu_backend()
    reason = nnkern.unavailable_reason(name)
    if reason is not None:
        raise CommandError(f"backend {name!r} is not usable here: {reason}")
    return name


def _format_rate(samples: int, seconds: float) -> str:
    return f"{samples / seconds:,.0f} samples/s" if seconds > 0 else "- samples/s"


# ---------------------------------------------------------------------------------------
# nnkern train
# ---------------------------------------------------------------------------------------


class TrainingProgress:
    """What `nnkern train` shows while it trains (a callback of ``Sequential.fit``): a
    progress bar per epoch on stderr when stderr is a terminal, a plain line every
    ``plain_every_s`` seconds otherwise, and one line per epoch on stdout with the
    train/test (or validation: ``validation_name``) loss and accuracy and the training
    throughput (evaluation excluded)."""

    BAR_WIDTH = 30

    def __init__(self, *, err=None, out=None, plain_every_s: float = 10.0, validation_name: str = "test"):
        self.validation_name = validation_name
        self.err = err or sys.stderr
        self.out = out or sys.stdout
        self.on_terminal = self.err.isatty()
        self.plain_every_s = plain_every_s
        self.epoch_seconds: list[float] = []

    def on_train_begin(self, info: dict) -> None:
        self.epochs, self.samples, self.steps = info["epochs"], info["samples"], info["steps"]

    def on_epoch_begin(self, epoch: int, steps: int) -> None:
        self.started = self.last_shown = time.perf_counter()
        self.train_seconds = 0.0

    def on_batch_end(self, epoch: int, step: int, steps: int, logs: dict) -> None:
        now = time.perf_counter()
        self.train_seconds = now - self.started
        seen = self.samples if step == steps else round(self.samples * step / steps)
        if self.on_terminal:
            if now - self.last_shown >= 0.1 or step == steps:
                self.last_shown = now
                filled = self.BAR_WIDTH * step // steps
                bar = "#" * filled + "." * (self.BAR_WIDTH - filled)
                self.err.write(f"\repoch {epoch}/{self.epochs} [{bar}] {seen}/{self.samples}"
                               f"  loss {logs['loss']:.4f}  {_format_rate(seen, self.train_seconds)} ")
                self.err.flush()
        elif now - self.last_shown >= self.plain_every_s:
            self.last_shown = now
            print(f"epoch {epoch}/{self.epochs}: {seen}/{self.samples} samples ({step / steps:.0%}),"
                  f" loss {logs['loss']:.4f}", file=self.err, flush=True)

    def on_epoch_end(self, epoch: int, logs: dict) -> None:
        if self.on_terminal:
            self.err.write("\r\x1b[K")  # clear the bar's line
            self.err.flush()
        self.epoch_seconds.append(self.train_seconds)
        line = f"epoch {epoch}/{self.epochs}  train loss {logs['loss']:.4f}"
        if "accuracy" in logs:
            line += f" acc {logs['accuracy']:.2%}"
        if "val_loss" in logs:
            line += f"  {self.validation_name} loss {logs['val_loss']:.4f}"
        if "val_accuracy" in logs:
            line += f" acc {logs['val_accuracy']:.2%}"
        line += f"  {_format_rate(self.samples, self.train_seconds)}  {self.train_seconds:.1f} s"
        print(line, file=self.out, flush=True)


def make_schedule(name: str, total_steps: int, warmup: int = 0):
    """The learning-rate schedule of ``nnkern train --lr-schedule NAME --warmup N`` for a
    training of ``total_steps`` optimizer steps, stepped after every step (None: a
    constant rate). "linear" decays the rate to 0 at the last step, "cosine" along a half
    cosine to 0; ``warmup`` first raises it linearly from lr / warmup to lr over that many
    steps, the decay taking the steps after it."""
    from . import optim

    if not 0 <= warmup < total_steps:
        raise CommandError(f"--warmup {warmup} must be fewer than the {total_steps} steps of the training")
    decay_steps = total_steps - warmup
    main = {"linear": lambda: optim.LinearLR(1.0, 0.0, total_iters=decay_steps, interval="step"),
            "cosine": lambda: optim.CosineAnnealingLR(decay_steps, interval="step"),
            "constant": lambda: None}[name]()
    if not warmup:
        return main
    ramp = optim.LinearLR(1.0 / warmup, 1.0, total_iters=warmup, interval="step")
    return ramp if main is None else optim.SequentialLR([ramp, main], [warmup], interval="step")


def _check_outputs(outputs: dict) -> None:
    """Fail before any long work when a file the command will write cannot be written:
    ``outputs`` maps option names (such as "--save") to their paths (None: not given).
    "--save" is written by Sequential.save, which renames a new file over an old one."""
    from ._paths import check_writable

    given = {option: path for option, path in outputs.items() if path}
    by_path: dict[str, str] = {}
    for option, path in given.items():
        try:
            check_writable(path, option, replaced_by_rename=option == "--save")
        except OSError as exc:
            raise CommandError(str(exc)) from None
        other = by_path.setdefault(os.path.realpath(path), option)
        if other != option:
            raise CommandError(f"{other} and {option} both write {path}")


def _require_matplotlib() -> None:
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError("writing a plot needs matplotlib; install it with: pip install nnkern[plot]")


def _apply_threads(args) -> None:
    """Set ``--threads``; a count above the usable cores is lowered to them, with a
    warning on stderr, unless ``--oversubscribe`` (:func:`main` runs such a command inside
    ``allow_oversubscription``) or NNKERN_ALLOW_OVERSUBSCRIPTION=1."""
    if args.threads is None:
        return
    usable = nnkern._threads.default_num_threads()
    if args.threads > usable and not nnkern._threads.oversubscription_allowed():
        print(f"nnkern {args.command}: warning: --threads {args.threads} is more than the {usable} core(s) this "
              f"process may use; using {usable} threads (more threads than cores make every step wait for "
              f"threads that are not running). Add --oversubscribe to use {args.threads} anyway.",
              file=sys.stderr, flush=True)
        args.threads = usable
    nnkern.set_num_threads(args.threads)


def _fallback_path(path: str) -> str:
    """Where a model that could not be saved at ``path`` goes instead: a new file in the
    temporary folder, named after the original."""
    stem = os.path.basename(path) or "model.npz"
    fd, fallback = tempfile.mkstemp(prefix=f"nnkern-unsaved-{time.strftime('%Y%m%d-%H%M%S')}-",
                                    suffix=f"-{stem}")
    os.close(fd)
    return fallback


def _save_trained(model, path: str) -> int:
    """Save the trained model at ``path``; if that fails (the disk filled up, the folder
    went away), save it in the temporary folder instead and say where: the training is
    never lost to a failed save. Returns the exit status."""
    try:
        model.save(path)
    except OSError as exc:
        reason = f"{type(exc).__name__}: {exc}"
    else:
        print(f"saved the model to {path}")
        return 0
    print(f"nnkern train: error: could not save the model to {path} ({reason})", file=sys.stderr)
    try:
        fallback = _fallback_path(path)
        model.save(fallback)
    except OSError as exc:
        raise CommandError(f"could not save the trained model to {path} ({reason}), nor to the temporary "
                           f"folder ({type(exc).__name__}: {exc})") from None
    print(f"nnkern train: the trained model was saved to {fallback} instead; move it where you want it: "
          f"mv {fallback} {path}", file=sys.stderr)
    return 1


def _train(args) -> int:
    from . import callbacks as fit_callbacks
    from .nn import NonFiniteLossError

    _check_outputs({"--save": args.save, "--plot": args.plot})
    if args.plot:
        _require_matplotlib()
    if args.early_stopping and args.validation_split == 0:
        raise CommandError("--early-stopping needs --validation-split above 0: it must not choose the model "
                           "on the test images")
    _apply_threads(args)
    backend = _check_backend(args.backend)
    dtype = np.dtype(args.dtype)
    (x_train, y_train), (x_test, y_test) = _load_mnist(args.data, dtype)
    if args.limit is not None:
        x_train, y_train = x_train[: args.limit], y_train[: args.limit]
    split = args.validation_split if args.validation_split is not None else (0.1 if args.early_stopping else 0.0)
    held_out = int(round(split * len(x_train)))
    if split and not 0 < held_out < len(x_train):
        raise CommandError(f"--validation-split {split:g} of {len(x_train)} images leaves no images to "
                           f"{'validate on' if held_out == 0 else 'train on'}")
    if held_out:  # the last images, as Keras' validation_split
        validation = (x_train[-held_out:], y_train[-held_out:])
        x_train, y_train = x_train[:-held_out], y_train[:-held_out]
    else:
        validation = (x_test, y_test)
    validation_name = "val" if held_out else "test"
    model = build_mlp(args.hidden, activation=args.activation, backend=backend, dtype=dtype, seed=args.seed)
    optimizer = make_optimizer(args.optimizer, args.lr, args.momentum, args.weight_decay)
    steps = math.ceil(len(x_train) / args.batch_size) * args.epochs
    optimizer.schedule = make_schedule(args.lr_schedule, steps, args.warmup)
    sizes = "-".join(str(n) for n in (INPUT_FEATURES, *args.hidden, NUM_CLASSES))
    schedule = {"linear": " decayed linearly to 0", "cosine": " on a cosine to 0", "constant": " constant"}
    print(f"training {sizes} {args.activation} on {len(x_train)} MNIST images (test: {len(x_test)}"
          + (f", validation: the last {held_out} training images" if held_out else "") + "),"
          f" backend {backend}, {dtype.name}, {nnkern.get_num_threads()} thread(s)")
    print(f"optimizer {args.optimizer} lr {optimizer.schedule.base_lr if optimizer.schedule else optimizer.lr:g}"
          + (f" momentum {args.momentum:g}" if args.optimizer in ("momentum", "nesterov") else "")
          + (f" warmed up over {args.warmup} steps," if args.warmup else "") + schedule[args.lr_schedule]
          + f", weight decay {args.weight_decay:g}, batch {args.batch_size}, {args.epochs} epoch(s),"
          f" seed {args.seed}"
          + (f"; early stopping after {args.early_stopping} epoch(s) without a better val loss" if
             args.early_stopping else ""), flush=True)

    progress = TrainingProgress(validation_name=validation_name)
    callbacks = [progress]
    stopper = None
    if args.early_stopping:
        stopper = fit_callbacks.EarlyStopping(patience=args.early_stopping, restore_best_weights=True)
        callbacks.append(stopper)
    try:
        history = model.fit(
            x_train, y_train, epochs=args.epochs, batch_size=args.batch_size, optimizer=optimizer,
            shuffle=True, seed=args.seed, validation_data=validation, verbose=False, callbacks=callbacks,
        )
    except NonFiniteLossError as exc:
        raise CommandError(str(exc)) from None
    if stopper is not None and stopper.stopped_epoch is not None:
        print(f"stopped after epoch {stopper.stopped_epoch}: no better val loss for {args.early_stopping} epoch(s);"
              f" kept the weights of epoch {stopper.best_epoch} (val loss {stopper.best:.4f})")
    train_seconds = sum(progress.epoch_seconds)
    if held_out:
        test_loss, test_accuracy = model.evaluate(x_test, y_test)
    else:
        test_loss, test_accuracy = history.history["val_loss"][-1], history.history["val_accuracy"][-1]
    trained_samples = len(history.epochs) * len(x_train)
    print(f"test accuracy {test_accuracy:.2%} (loss {test_loss:.4f}); training time {train_seconds:.1f} s"
          f" ({_format_rate(trained_samples, train_seconds)})")
    status = _save_trained(model, args.save) if args.save else 0
    if args.plot:
        from .plots import plot_history

        plot_history(history, args.plot, title=f"MNIST {sizes} {args.activation}, {args.optimizer}",
                     validation_label="validation" if held_out else "test")
        print(f"wrote the training curves to {args.plot}")
    return status


# ---------------------------------------------------------------------------------------
# nnkern evaluate / predict
# ---------------------------------------------------------------------------------------


def _evaluate(args) -> int:
    backend = _check_backend(args.backend)
    model = _load_model(args.model, backend)
    _, (x_test, y_test) = _load_mnist(args.data, model.dtype)
    started = time.perf_counter()
    loss, accuracy = model.evaluate(x_test, y_test)
    seconds = time.perf_counter() - started
    print(f"{args.model}: test accuracy {accuracy:.2%}, loss {loss:.4f}"
          f" ({len(x_test)} images, backend {backend}, {seconds:.2f} s)")
    return 0


def _predict(args) -> int:
    backend = _check_backend(args.backend)
    model = _load_model(args.model, backend)
    _, (x_test, y_test) = _load_mnist(args.data, model.dtype)
    if args.start >= len(x_test):
        raise CommandError(f"--start {args.start} is past the {len(x_test)} test images")
    x, y = x_test[args.start: args.start + args.count], y_test[args.start: args.start + args.count]
    predicted = model.predict_classes(x)
    print(f"Predicted: {' '.join(str(int(c)) for c in predicted)}")
    print(f"True:      {' '.join(str(int(c)) for c in y)}")
    for i, (guess, truth) in enumerate(zip(predicted, y), start=args.start):
        print(f"test image {i:5d}: predicted {int(guess)}, true {int(truth)}"
              f"{'' if guess == truth else '  <- wrong'}")
    correct = int(np.sum(predicted == y))
    print(f"{correct}/{len(y)} correct")
    return 0


# ---------------------------------------------------------------------------------------
# nnkern info
# ---------------------------------------------------------------------------------------


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "not installed"


def _cython_build_version() -> str:
    """The Cython version that compiled the cython backend's modules, read from the
    ``_cython_X_Y_Z`` module their function type carries, or why it cannot be told."""
    import pkgutil

    from . import backends

    compiled = [m.name for m in pkgutil.iter_modules(backends.__path__) if m.name.startswith("_cy_")]
    if not compiled:
        return "not built"
    try:
        module = importlib.import_module(f"nnkern.backends.{compiled[0]}")
    except ImportError as exc:
        return f"built but not importable ({exc})"
    for value in vars(module).values():
        type_module = type(value).__module__
        if type_module.startswith("_cython_"):
            return type_module.removeprefix("_cython_").replace("_", ".")
    return "unknown"


def _cpu_description() -> tuple[str, list[str]]:
    """The CPU model (as the training step's plans are keyed) and the SIMD extensions it
    reports, from /proc/cpuinfo where there is one."""
    from ._plan import cpu_model

    flags = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):
                    present = set(value.split())
                    flags = [flag for flag in SIMD_FLAGS if flag in present]
                    break
    except OSError:
        pass
    return cpu_model(), flags


def _info(args) -> int:
    from threadpoolctl import threadpool_info

    from . import _plan

    import numba

    print(f"nnkern {nnkern.__version__}  (Python {platform.python_version()}, {platform.platform()})")
    print(f"numpy {np.__version__}, numba {numba.__version__}, cython {_version('cython')}"
          f" (cython backend built with {_cython_build_version()}),"
          f" torch {_version('torch')}, matplotlib {_version('matplotlib')},"
          f" numba-cuda {_version('numba-cuda')}")
    print("backends:")
    for name in nnkern._backend.BACKENDS:
        reason = nnkern.unavailable_reason(name)
        print(f"  {name:<6} {'available' if reason is None else 'unavailable: ' + reason}")
    print(f"  default: {nnkern.get_backend()} (fastest CPU backend: {fastest_cpu_backend()})")
    if nnkern.unavailable_reason("cython") is None:
        print(f"  cython GEMM: {nnkern._backend.backend_module('cython').gemm_variant()}")
    model, flags = _cpu_description()
    print(f"CPU: {model}; {os.cpu_count()} logical CPU(s), {nnkern._threads.default_num_threads()} usable;"
          f" SIMD: {' '.join(flags) or 'unknown'}")
    budget, source = nnkern.thread_budget()
    numba_threads = numba.get_num_threads()  # starts Numba's threading layer, which it then names
    print(f"threads: nnkern.get_num_threads() = {budget} (from {source}),"
          f" numba = {numba_threads} (pool {numba.config.NUMBA_NUM_THREADS},"
          f" threading layer {numba.threading_layer()})")
    pools = threadpool_info()
    print("thread pools (threadpoolctl):" + ("" if pools else " none found"))
    for pool in pools:
        details = ", ".join(f"{key} {pool[key]}" for key in ("internal_api", "version", "threading_layer",
                                                             "architecture") if pool.get(key))
        print(f"  {pool['user_api']}: {details}, {pool['num_threads']} thread(s) ({pool['filepath']})")
    blas = [pool for pool in pools if pool["user_api"] == "blas"]
    print("numpy BLAS: " + ("; ".join(f"{p['internal_api']} {p.get('version') or ''}".strip() for p in blas)
                            if blas else _numpy_blas_from_config()))
    path = _plan.cache_path()
    print(f"training step plans: {_plan.PLAN_ENV}={os.environ.get(_plan.PLAN_ENV) or 'cached'}; cache {path}"
          f" ({len(_plan.read_cache(path))} plan(s); `nnkern tune` makes them ahead of time)")
    return 0


# ---------------------------------------------------------------------------------------
# nnkern tune
# ---------------------------------------------------------------------------------------

# The share of nonzeros in tune's sparse inputs: MNIST's pixels (what `nnkern train` feeds).
MNIST_NONZERO_SHARE = 0.19
# Synthetic batches tune cycles through (rows of each: the batch size).
TUNE_BATCHES = 4


def _plan_one(backend: str, hidden, activation: str, rows: int, dtype, inputs: str, seed: int = 0):
    """Time the thread counts of the fused step of one MNIST network and batch on synthetic
    data (``inputs``: "sparse", MNIST's share of nonzeros in [0, 1], or "dense" in [-1, 1]),
    whatever plan is cached; returns the step's planner, its plan made and cached."""
    from . import _plan, engine
    from .losses import CrossEntropyLoss

    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (rows * TUNE_BATCHES, INPUT_FEATURES)).astype(dtype)
    if inputs == "sparse":
        x = np.abs(x) * (rng.random(x.shape) < MNIST_NONZERO_SHARE)
    y = rng.integers(0, NUM_CLASSES, len(x))
    model = build_mlp(hidden, activation=activation, backend=backend, dtype=dtype, seed=seed)
    optimizer = make_optimizer(DEFAULT_OPTIMIZER, None, DEFAULT_MOMENTUM, DEFAULT_WEIGHT_DECAY, model=model)
    step = engine.build_fused_step(model, optimizer, CrossEntropyLoss(), x, y, rows)
    step.plan.setting, step.plan.retime = "auto", True  # time the candidates whatever the setting
    # the step's first call, then every candidate's warm-up and timed steps
    most_steps = 1 + len(_plan.candidate_threads(nnkern.get_num_threads())) * (_plan.WARMUP_STEPS + _plan.TIMED_STEPS)
    for number in range(most_steps):
        batch = slice((number % TUNE_BATCHES) * rows, (number % TUNE_BATCHES + 1) * rows)
        step(x[batch], y[batch])
        if step.plan.current_plan() is not None:
            break
    return step.plan


def _tune(args) -> int:
    from . import _plan

    _apply_threads(args)
    if _plan.plan_setting() not in ("auto", "cached"):
        raise CommandError(f"{_plan.PLAN_ENV}={os.environ[_plan.PLAN_ENV]} switches the plans off; "
                           f"unset it (or set it to auto or cached) to make plans")
    backend = _check_backend(args.backend)
    if backend not in ("cython", "numba"):
        raise CommandError(f"the {backend!r} backend has no fused CPU step to plan (cython and numba have)")
    hidden_sizes = args.hidden or [DEFAULT_HIDDEN]
    print(f"planning the fused {backend} step on {_plan.cpu_model()}, thread budget {nnkern.get_num_threads()};"
          f" cache {_plan.cache_path()}", flush=True)
    failed = 0
    for hidden in hidden_sizes:
        for rows in args.batch_size or [DEFAULT_BATCH_SIZE]:
            for dtype in args.dtype or ["float32"]:
                for inputs in args.inputs:
                    planner = _plan_one(backend, hidden, args.activation, rows, np.dtype(dtype), inputs)
                    plan = planner.current_plan()
                    print(f"{planner.network}, batch {rows}, {dtype}, {inputs} input: {plan.describe()}", flush=True)
                    failed += plan.source == "timed" and not plan.saved
    return 1 if failed else 0


def _numpy_blas_from_config() -> str:
    """numpy's BLAS as its build configuration names it (when threadpoolctl sees none loaded)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except (TypeError, KeyError):
        return "unknown"
    return f"{blas.get('name', 'unknown')} {blas.get('version', '')}".strip()


# ---------------------------------------------------------------------------------------
# nnkern bench / plots
# ---------------------------------------------------------------------------------------


def _bench(args) -> int:
    _check_outputs({"--json": args.json, "--plot": args.plot})
    if args.plot:
        _require_matplotlib()
        _check_plot_format(args.plot)
    _apply_threads(args)
    try:
        bench = importlib.import_module("nnkern.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "nnkern.bench":
            raise
        raise CommandError("benchmarks are not part of this installation (no module nnkern.bench)") from None
    return bench.run_cli(args)


def _check_plot_format(path: str) -> None:
    """matplotlib picks the file format from the name's ending (the bench chart): refuse
    an ending it cannot write, before the benchmark runs."""
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    ending = os.path.splitext(path)[1].lstrip(".").lower()
    if ending not in formats:
        raise CommandError(f"--plot {path}: matplotlib writes {', '.join(sorted(formats))} files, "
                           f"named by their ending (e.g. bench.png)")


def _plot_optimizers(args) -> int:
    from .plots import plot_optimizer_paths

    _check_outputs({"PATH": args.path})
    paths = plot_optimizer_paths(args.path, steps=args.steps)
    for name, points in paths.items():
        print(f"{name:<9} ends at ({points[-1, 0]: .4f}, {points[-1, 1]: .4f})")
    print(f"wrote {args.path}")
    return 0


def _plot_gradient_descent(args) -> int:
    from .plots import GD_LEARNING_RATES, plot_gradient_descent

    _check_outputs({"PATH": args.path})
    paths = plot_gradient_descent(args.path, steps=args.steps)
    for label, points in paths.items():
        end = points[-1]
        print(f"lr {GD_LEARNING_RATES[label]:<6g} ({label}): ends at ({end[0]:.4g}, {end[1]:.4g})")
    print(f"wrote {args.path}")
    return 0


# ---------------------------------------------------------------------------------------
# Parser and entry point
# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnkern", description="Train and run MLPs on MNIST with nnkern's kernels.")
    parser.add_argument("--version", action="version", version=f"nnkern {nnkern.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_threads(command):
        command.add_argument("--threads", type=_positive_int,
                             help="threads for every kernel (default: the usable cores; more is lowered to them"
                                  " with a warning unless --oversubscribe)")
        command.add_argument("--oversubscribe", action="store_true",
                             help="use --threads even above the usable cores")

    def add_data_and_backend(command, backend_help):
        command.add_argument("--data", metavar="DIR", help="directory with the MNIST IDX files"
                             " (default: $NNKERN_DATA, ./data/mnist, the user cache, then download)")
        command.add_argument("--backend", choices=nnkern._backend.BACKENDS, help=backend_help)

    train = commands.add_parser("train", help="train an MLP on MNIST",
                                description="Train an MLP on MNIST and report its test accuracy.")
    train.add_argument("--hidden", type=_layer_sizes, default=DEFAULT_HIDDEN, metavar="N,N,...",
                       help="hidden layer sizes (default: 256,128,64,20)")
    train.add_argument("--activation", choices=ACTIVATIONS, default="relu",
                       help="hidden activation (default: relu)")
    train.add_argument("--optimizer", choices=OPTIMIZERS, default=DEFAULT_OPTIMIZER,
                       help=f"(default: {DEFAULT_OPTIMIZER})")
    train.add_argument("--lr", type=_positive_float, help="initial learning rate (default per optimizer: "
                       + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    train.add_argument("--momentum", type=_fraction, default=DEFAULT_MOMENTUM,
                       help=f"momentum of --optimizer momentum and nesterov (default: {DEFAULT_MOMENTUM})")
    train.add_argument("--weight-decay", type=_nonnegative_float, default=DEFAULT_WEIGHT_DECAY,
                       help=f"L2 weight decay added to every gradient (default: {DEFAULT_WEIGHT_DECAY:g})")
    train.add_argument("--lr-schedule", choices=LR_SCHEDULES, default="linear",
                       help="linear (default) or cosine: lower the learning rate after every step, to 0 at "
                            "the end of the training; constant: keep it")
    train.add_argument("--warmup", type=_nonnegative_int, default=0, metavar="STEPS",
                       help="raise the learning rate linearly from lr/STEPS to lr over the first STEPS steps "
                            "(default: 0)")
    train.add_argument("--early-stopping", type=_positive_int, metavar="PATIENCE",
                       help="stop when the validation loss has not improved for PATIENCE epochs and keep "
                            "the best epoch's weights (validation: --validation-split, default 0.1)")
    train.add_argument("--validation-split", type=_fraction, metavar="F",
                       help="hold out the last fraction F of the training images for validation: the "
                            "per-epoch val loss and accuracy (default: 0, the test images are shown instead;"
                            " 0.1 with --early-stopping)")
    train.add_argument("--batch-size", type=_positive_int, default=DEFAULT_BATCH_SIZE,
                       help=f"(default: {DEFAULT_BATCH_SIZE})")
    train.add_argument("--epochs", type=_positive_int, default=DEFAULT_EPOCHS,
                       help=f"(default: {DEFAULT_EPOCHS})")
    add_data_and_backend(train, "kernel backend (default: the fastest CPU backend available)")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                       help="(default: float32)")
    train.add_argument("--seed", type=int, default=0,
                       help="seed of the initial weights and the shuffling (default: 0)")
    add_threads(train)
    train.add_argument("--save", metavar="PATH", help="save the trained model there (checked before training;"
                       " if saving fails after training, the model is saved in the temporary folder instead)")
    train.add_argument("--plot", metavar="PATH.png", help="write the loss and accuracy curves there")
    train.add_argument("--limit", type=_positive_int, metavar="N", help="train on the first N images only")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="test accuracy of a saved model")
    evaluate.add_argument("model", metavar="MODEL", help="a file written by nnkern train --save")
    add_data_and_backend(evaluate, "kernel backend (default: the fastest CPU backend available)")
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="a saved model's predictions for a few test images")
    predict.add_argument("model", metavar="MODEL", help="a file written by nnkern train --save")
    predict.add_argument("--count", type=_positive_int, default=10, help="how many images (default: 10)")
    predict.add_argument("--start", type=int, default=0, help="index of the first test image (default: 0)")
    add_data_and_backend(predict, "kernel backend (default: the fastest CPU backend available)")
    predict.set_defaults(run=_predict)

    info = commands.add_parser("info", help="backends, versions, threads, CPU and BLAS")
    info.set_defaults(run=_info)

    tune = commands.add_parser(
        "tune", help="plan the training step's threads for this machine ahead of time",
        description="Time the fused training step of MNIST networks on this machine with 1 thread, the thread "
                    "budget and (from 4) half of it, on synthetic batches, and cache the fastest (fewest threads "
                    "within 5%) for the fits that follow: the plan a fit otherwise makes on its first steps. "
                    "Each option may be given several times; every combination is planned.")
    tune.add_argument("--hidden", type=_layer_sizes, action="append", metavar="N,N,...",
                      help="hidden layer sizes (default: 256,128,64,20, the network of nnkern train)")
    tune.add_argument("--activation", choices=ACTIVATIONS, default="relu", help="hidden activation (default: relu)")
    tune.add_argument("--batch-size", type=_positive_int, action="append",
                      help=f"(default: {DEFAULT_BATCH_SIZE})")
    tune.add_argument("--dtype", choices=("float32", "float64"), action="append", help="(default: float32)")
    tune.add_argument("--inputs", type=_input_kinds, default=("sparse", "dense"), metavar="sparse,dense",
                      help="sparse (MNIST's pixels in [0, 1], 81%% zeros: what nnkern train feeds; the first layer"
                           " reads only the nonzeros), dense (in [-1, 1]) or both (default: sparse,dense)")
    tune.add_argument("--backend", choices=("cython", "numba"),
                      help="(default: the fastest CPU backend available)")
    add_threads(tune)
    tune.set_defaults(run=_tune)

    bench = commands.add_parser("bench", help="compare every backend with the NumPy reference")
    bench.add_argument("--quick", action="store_true", help="small sizes and few repeats")
    bench.add_argument("--json", metavar="PATH", help="write the results there as JSON")
    bench.add_argument("--backends", metavar="NAME,...", help="backends to compare (default: all available)")
    bench.add_argument("--repeats", type=_positive_int, help="timed repeats per measurement")
    add_threads(bench)
    bench.add_argument("--plot", metavar="PATH.png", help="write a chart of the results there")
    bench.add_argument("--profile", action="store_true", help="also profile a training step per layer")
    bench.add_argument("--optimizers", metavar="NAME,...", default="sgd",
                       help="sgd, adam or sgd,adam: each contender trains with each, interleaved in one run; "
                            "with both, the table gives each contender's Adam epoch time against its SGD one "
                            "(default: sgd)")
    mine = bench.add_argument_group(
        "your own network", "any of these adds a 784-...-10 MNIST network beside the built-in ones; "
        "the others then default to --hidden 256,128,64,20 --activation relu --batch-size 64 "
        "--normalize symmetric --dtype float32")
    mine.add_argument("--hidden", type=_layer_sizes, metavar="N,N,...", help="hidden layer sizes")
    mine.add_argument("--activation", choices=ACTIVATIONS, help="hidden activation")
    mine.add_argument("--batch-size", type=_positive_int, help="mini-batch size")
    mine.add_argument("--normalize", choices=["unit", "symmetric"],
                      help="inputs x/255 in [0, 1] (unit: MNIST is 81%% zeros) or (x/255 - 0.5)/0.5 in [-1, 1] "
                           "(symmetric: dense)")
    mine.add_argument("--dtype", choices=["float32", "float64"], help="the network's dtype")
    mine.add_argument("--no-builtin", action="store_true", help="measure only your own network")
    bench.set_defaults(run=_bench)

    plot_opt = commands.add_parser("plot-optimizers", help="optimizer paths on x^2/20 + y^2 (PNG)")
    plot_opt.add_argument("path", metavar="PATH.png")
    plot_opt.add_argument("--steps", type=_positive_int, default=30, help="(default: 30)")
    plot_opt.set_defaults(run=_plot_optimizers)

    plot_gd = commands.add_parser("plot-gradient-descent",
                                  help="gradient descent on x0^2 + x1^2 with three learning rates (PNG)")
    plot_gd.add_argument("path", metavar="PATH.png")
    plot_gd.add_argument("--steps", type=_positive_int, default=20, help="(default: 20)")
    plot_gd.set_defaults(run=_plot_gradient_descent)
    return parser


def main(argv=None) -> int:
    """Run ``nnkern`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "oversubscribe", False):
            with nnkern._threads.allow_oversubscription():
                return args.run(args)
        return args.run(args)
    except (CommandError, BackendUnavailableError) as exc:
        print(f"nnkern {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except ImportError as exc:
        if "pip install" not in str(exc):  # only the optional extras say how to install themselves
            raise
        print(f"nnkern {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # the reader went away (`nnkern info | head`): stop quietly
        # (the recipe of Python's signal docs: point stdout at devnull so the flush at exit
        # does not raise again)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        print(f"\nnnkern {args.command}: interrupted", file=sys.stderr)
        return 130
