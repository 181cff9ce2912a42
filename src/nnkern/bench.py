"""``nnkern bench``: every backend against the NumPy reference (and PyTorch), end to end.

One training epoch on MNIST for the two networks of the source material, with SGD (lr 0.1)
(``--optimizers sgd,adam`` adds Adam, lr 0.001, in the same run and reports each
contender's Adam epoch time against its SGD one):

* "TwoLayerNet" 784-100-10 with sigmoid, mini-batches of 100;
* 784-256-128-64-20-10 with ReLU, mini-batches of 64;

each on the two input scalings of the source material: pixels / 255 in [0, 1] ("unit":
81% of MNIST's inputs are zero, so nnkern's fused step reads only the nonzeros of the
first layer's input) and (x / 255 - 0.5) / 0.5 in [-1, 1] ("symmetric": no input is zero,
every product dense, as most users' data is). ``--hidden``, ``--activation``,
``--batch-size``, ``--normalize`` and ``--dtype`` add the user's own network beside them.

Every contender (each nnkern backend, the "numpy" reference, and PyTorch on the CPU when it
can be imported) runs **in a process of its own** (two thread pools in one process spin on
each other's cores), starts from the same initial weights and sees the same batches in the
same order. The processes take turns — A B C A B C ... — over several repeats, so that a
slow minute on a shared machine hurts all of them alike, with an untimed pause before each
epoch so that the previous contender's idle thread pools have stopped spinning; the table
reports medians.

Reported per contender:

* median samples/s, and its ratio to the NumPy reference and to PyTorch;
* achieved GFLOP/s of useful work, and its fraction of this machine's GEMM peak for the
  dtype, measured in the same run: the better of NumPy's BLAS and nnkern's own GEMM on
  n×n×n products (best of a few, same thread count; on some CPUs the BLAS that NumPy ships
  runs a kernel for an older instruction set and reaches half of what the cores can do).
  Useful work counts the three GEMMs of each layer: forward ``x @ W`` (2·N·in·out), the
  weight gradient ``x.T @ dY`` (2·N·in·out) and the input gradient ``dY @ W.T``
  (2·N·in·out), the last one for every layer but the first (nothing needs the gradient of
  the input images). Per sample: ``FLOPs = 4·Σ in·out + 2·Σ_{layers after the first} in·out``
  (the rule of thumb 6·Σ in·out without the first layer's input gradient). Activations,
  bias, loss and update are O(N·out) and left out; with "unit" inputs the sparse first
  layer does fewer multiply-adds than it is credited with (its dense FLOPs are counted);
* the test accuracy after the timed epoch, and whether the loss after the untimed warm-up
  steps (same weights, same batches) equals the reference's, so a fast but wrong backend
  shows.

:func:`profile_step` (any step callable) and :func:`profile_model` (an ``nnkern.nn`` model's
``train_step``) time each kernel call of a training step (forward linear per layer, loss,
backward matmuls, bias gradients, updates) as a fraction of the step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import statistics
import sys
import time
from collections import defaultdict

import numpy as np

import nnkern

from ._threads import default_num_threads, openmp_defaults

__all__ = [
    "NETWORKS",
    "Network",
    "benchmark_backends",
    "machine_info",
    "versions",
    "measure_sgemm_peak",
    "initial_weights",
    "epoch_batches",
    "set_threads",
    "NnkernTrainer",
    "TorchTrainer",
    "make_trainer",
    "run",
    "format_header",
    "format_table",
    "format_report",
    "plot",
    "profile_step",
    "profile_model",
    "profile_networks",
    "format_profile",
    "run_cli",
]

LEARNING_RATE = 0.1
# optimizer name -> learning rate; every contender builds its own library's optimizer
OPTIMIZERS = {"sgd": LEARNING_RATE, "adam": 1e-3}
DTYPE = np.float32  # the default dtype of a network
REFERENCE = "numpy"
TORCH = "torch"
SCHEMA = "nnkern-bench/2"
LOSS_RTOL = 1e-3
MNIST_TRAIN_SAMPLES, MNIST_TEST_SAMPLES = 60_000, 10_000  # the canonical split


# The input scalings of the source material: x / 255 ("unit", MNIST 81% zeros) and
# (x / 255 - 0.5) / 0.5 ("symmetric", no zeros).
NORMALIZATIONS = {"unit": "[0, 1]", "symmetric": "[-1, 1]"}
# The hidden activations by name, and their class in both nnkern.nn and torch.nn (the same
# name and defaults: LeakyReLU's slope 0.01, exact GELU).
ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "ReLU", "leaky_relu": "LeakyReLU", "gelu": "GELU"}


@dataclasses.dataclass(frozen=True)
class Network:
    """A fully connected network on MNIST: layer widths, the hidden activation, the batch
    size, the input scaling (a key of ``NORMALIZATIONS``) and the dtype."""

    name: str
    sizes: tuple[int, ...]
    activation: str
    batch_size: int
    normalize: str = "unit"
    dtype: str = "float32"

    @property
    def layer_shapes(self) -> list[tuple[int, int]]:
        return list(zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def flops_per_sample(self) -> int:
        """Useful GEMM FLOPs of one training sample (see the module docstring)."""
        products = [fan_in * fan_out for fan_in, fan_out in self.layer_shapes]
        return 4 * sum(products) + 2 * sum(products[1:])

    @property
    def inputs(self) -> str:
        """The input scaling in words, e.g. "inputs in [-1, 1]"."""
        return f"inputs in {NORMALIZATIONS[self.normalize]}"

    def data(self, x_unit):
        """MNIST images as this network takes them, from pixels / 255 (``x_unit``)."""
        x = x_unit if self.normalize == "unit" else (x_unit - 0.5) / 0.5
        return np.ascontiguousarray(x, dtype=self.dtype)


def custom_network(hidden=(256, 128, 64, 20), activation: str = "relu", batch_size: int = 64,
                   normalize: str = "symmetric", dtype: str = "float32") -> Network:
    """The user's own MNIST network (784 inputs, ``hidden`` widths, 10 classes); ValueError
    names a bad choice."""
    hidden = tuple(int(h) for h in hidden)
    if any(h < 1 for h in hidden):
        raise ValueError(f"hidden widths must be positive, got {hidden}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be positive, got {batch_size}")
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"unknown input scaling {normalize!r}; choose from {', '.join(NORMALIZATIONS)}")
    if np.dtype(dtype) not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    sizes = (784, *hidden, 10)
    return Network("-".join(map(str, sizes)) + f" {activation}", sizes, activation, int(batch_size), normalize,
                   np.dtype(dtype).name)


_TWO_LAYER = Network("784-100-10 sigmoid", (784, 100, 10), "sigmoid", 100)
_DEEP = Network("784-256-128-64-20-10 relu", (784, 256, 128, 64, 20, 10), "relu", 64)
NETWORKS = (
    _TWO_LAYER,
    dataclasses.replace(_TWO_LAYER, normalize="symmetric"),
    _DEEP,
    dataclasses.replace(_DEEP, normalize="symmetric"),
)


# ---------------------------------------------------------------------------------------
# Who runs, on what machine
# ---------------------------------------------------------------------------------------


def _cuda_is_simulated() -> bool:
    if "numba" not in sys.modules:
        return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def benchmark_backends(requested=None) -> tuple[list[str], dict[str, str]]:
    """The nnkern backends worth timing here, reference first, and why the others are not.

    "cuda" counts only on a real GPU: under Numba's CUDA simulator it is usable but its
    timings mean nothing. ``requested`` (names) narrows the list; the reference is always
    kept, since every ratio is taken to it.
    """
    from .backends import BACKENDS

    if requested is not None:
        unknown = sorted(set(requested) - set(BACKENDS))
        if unknown:
            raise ValueError(f"unknown backend(s) {unknown}; nnkern knows {', '.join(BACKENDS)}")
    timed, skipped = [], {}
    for name in BACKENDS:
        if requested is not None and name != REFERENCE and name not in requested:
            continue
        reason = nnkern.unavailable_reason(name)
        if reason is None and name == "cuda" and _cuda_is_simulated():
            reason = "CUDA simulator (NUMBA_ENABLE_CUDASIM) is on: no real GPU to time"
        if reason is None:
            timed.append(name)
        else:
            skipped[name] = reason
    return timed, skipped


def _torch():
    """PyTorch, or None when it cannot be imported. Imported with its own OpenMP defaults
    (its libgomp reads them when it loads), not the spin count nnkern sets for its own."""
    try:
        with openmp_defaults():
            import torch
    except ImportError:
        return None
    return torch


def machine_info() -> dict:
    """CPU model, cores, SIMD flags and the BLAS NumPy calls."""
    cpu_model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name":
                    cpu_model = value.strip()
                elif key in ("flags", "Features") and not flags:
                    flags = set(value.split())
    simd = [f for f in ("sse2", "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl",
                        "avx512_bf16", "amx_tile", "neon", "asimd", "sve") if f in flags]
    from threadpoolctl import threadpool_info

    blas = [
        {k: pool.get(k) for k in ("internal_api", "version", "architecture", "threading_layer")}
        for pool in threadpool_info()
        if pool.get("user_api") == "blas"
    ]
    return {
        "cpu": cpu_model,
        "cores": default_num_threads(),
        "logical_cpus": os.cpu_count(),
        "simd": simd,
        "platform": platform.platform(),
        "blas": blas,
    }


def versions() -> dict:
    """Versions of Python and of every package that takes part."""
    found = {"python": platform.python_version(), "nnkern": nnkern.__version__}
    for package in ("numpy", "numba", "numba-cuda", "cython", "threadpoolctl", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found[package] = importlib.metadata.version(package)
    return found


def set_threads(threads: int) -> None:
    """The same thread count for nnkern's pools (OpenMP, Numba, BLAS) and PyTorch's."""
    nnkern.set_num_threads(threads)
    torch = _torch()
    if torch is not None:
        torch.set_num_threads(threads)


def _best_gflops(product, size: int, repeats: int) -> float:
    product()  # first touch of the pages and of the threads
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        product()
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


def measure_sgemm_peak(size: int = 2048, repeats: int = 3, dtype=DTYPE) -> dict:
    """This machine's GEMM peak for ``dtype`` with the current thread count: the best of
    ``repeats`` products of ``size``² matrices by NumPy's BLAS and by nnkern's own GEMM (the
    fastest compiled backend here), whichever is faster. Each is reported too: on some CPUs
    NumPy's BLAS runs a kernel for an older instruction set."""
    from . import ops

    dtype = np.dtype(dtype)
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(dtype)
    b = rng.standard_normal((size, size)).astype(dtype)
    out = np.empty((size, size), dtype=dtype)
    found = {"blas_gflops": _best_gflops(lambda: np.matmul(a, b, out=out), size, repeats)}
    backend = next((name for name in ("cython", "numba") if name in nnkern.available_backends()), None)
    if backend is not None:
        time.sleep(POOL_IDLE_PAUSE_S)  # the BLAS's idle workers stop spinning first
        found["nnkern_gflops"] = _best_gflops(lambda: ops.matmul(a, b, out=out, backend=backend),
                                              size, repeats)
        found["nnkern_backend"] = backend
    best_of = max((k for k in found if k.endswith("_gflops")), key=found.get)
    return {"gflops": found[best_of], "by": best_of.removesuffix("_gflops"), **found, "size": size,
            "repeats": repeats, "dtype": dtype.name}


# ---------------------------------------------------------------------------------------
# The contenders: an nnkern model on one backend, and the same network in PyTorch
# ---------------------------------------------------------------------------------------


def initial_weights(network: Network, seed: int = 0) -> list[np.ndarray]:
    """[W0, b0, W1, b1, ...] as PyTorch initialises nn.Linear: U(-1/sqrt(in), 1/sqrt(in)),
    W of shape (in, out), in the network's dtype."""
    rng = np.random.default_rng(seed)
    weights = []
    for fan_in, fan_out in network.layer_shapes:
        bound = 1.0 / math.sqrt(fan_in)
        weights.append(rng.uniform(-bound, bound, (fan_in, fan_out)).astype(network.dtype))
        weights.append(rng.uniform(-bound, bound, fan_out).astype(network.dtype))
    return weights


class NnkernTrainer:
    """An ``nnkern.nn`` model on one backend, trained by ``nnkern.optim.SGD`` (or ``Adam``),
    each step through the fused training engine where the backend has one (as ``model.fit``
    does), else through ``model.train_step``."""

    def __init__(self, backend: str, network: Network, weights: list[np.ndarray], optimizer: str = "sgd"):
        from . import nn, optim

        self.backend = backend
        self.weights = weights
        layers = []
        last = len(network.layer_shapes) - 1
        for i, (fan_in, fan_out) in enumerate(network.layer_shapes):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < last:
                layers.append(getattr(nn, ACTIVATIONS[network.activation])())
        self.model = nn.Sequential(*layers, backend=backend, dtype=network.dtype)
        self.loss = nn.CrossEntropyLoss()
        make = {"sgd": optim.SGD, "adam": optim.Adam}[optimizer]
        self.optimizer = make(self.model, lr=OPTIMIZERS[optimizer])
        self.fused_step = None

    def reset(self) -> None:
        """Back to the initial weights and a fresh optimizer (state zeroed in place: the
        fused step holds those arrays)."""
        for param, value in zip(self.model.parameters(), self.weights, strict=True):
            param[...] = value
        for state in self.optimizer.state:
            for array in state.values():
                array[...] = 0
        self.optimizer.t = 0

    def prepare(self, batches):
        """The batches as this trainer takes them (NumPy arrays: as they are); builds the
        fused step for them (it checks the whole data set once, as ``fit`` does)."""
        from .engine import fused_train_step

        xs = np.concatenate([xb for xb, _ in batches])
        ys = np.concatenate([yb for _, yb in batches])
        self.fused_step = fused_train_step(self.model, self.optimizer, self.loss, xs, ys,
                                           max(len(xb) for xb, _ in batches))
        return batches

    def step(self, xb, yb) -> float:
        if self.fused_step is not None:
            return self.fused_step(xb, yb)[0]
        loss, _ = self.model.train_step(xb, yb, self.optimizer, self.loss)
        return loss

    def train(self, batches) -> float:
        loss = math.nan
        for xb, yb in batches:
            loss = self.step(xb, yb)
        return float(loss)

    def accuracy(self, x, y) -> float:
        return float(np.mean(self.model.predict_classes(x) == y))


class TorchTrainer:
    """The same network in PyTorch (CPU, the network's dtype), trained by
    ``torch.optim.SGD`` (or ``Adam``)."""

    backend = TORCH

    def __init__(self, network: Network, weights: list[np.ndarray], optimizer: str = "sgd"):
        torch = _torch()
        self.torch = torch
        self.weights = weights
        layers = []
        last = len(network.layer_shapes) - 1
        for i, (fan_in, fan_out) in enumerate(network.layer_shapes):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < last:
                layers.append(getattr(torch.nn, ACTIVATIONS[network.activation])())
        self.model = torch.nn.Sequential(*layers).to(getattr(torch, network.dtype))
        self.loss = torch.nn.CrossEntropyLoss()
        make = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[optimizer]
        self.optimizer = make(self.model.parameters(), lr=OPTIMIZERS[optimizer])

    def reset(self) -> None:
        """Back to the initial weights and a fresh optimizer state."""
        with self.torch.no_grad():
            for param, value in zip(self.model.parameters(), self.weights, strict=True):
                # torch keeps W as (out, in); ours is (in, out)
                param.copy_(self.torch.from_numpy(value.T if value.ndim == 2 else value))
        self.optimizer.state.clear()  # torch.optim initialises it again on the next step

    def prepare(self, batches):
        """The batches as tensors sharing the NumPy arrays' memory."""
        return [(self.torch.from_numpy(xb), self.torch.from_numpy(yb)) for xb, yb in batches]

    def train(self, batches) -> float:
        loss = None
        for xb, yb in batches:
            self.optimizer.zero_grad(set_to_none=True)
            loss = self.loss(self.model(xb), yb)
            loss.backward()
            self.optimizer.step()
        return loss.item() if loss is not None else math.nan

    def accuracy(self, x, y) -> float:
        with self.torch.no_grad():
            logits = self.model(self.torch.tensor(x))  # a copy: x may be read-only
        return float(np.mean(logits.argmax(dim=1).numpy() == y))


# ---------------------------------------------------------------------------------------
# The interleaved end-to-end comparison
# ---------------------------------------------------------------------------------------


def epoch_batches(x, y, batch_size: int, samples: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``samples`` training samples in one seeded random order, cut into contiguous batches
    (copies made here, outside any timing; a final short batch is dropped)."""
    order = np.random.default_rng(seed).permutation(len(x))[: samples - samples % batch_size]
    xs, ys = np.ascontiguousarray(x[order]), np.ascontiguousarray(y[order], dtype=np.int64)
    return [(xs[i : i + batch_size], ys[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def make_trainer(name: str, network: Network, weights: list[np.ndarray], optimizer: str = "sgd"):
    """The trainer of contender ``name``: "torch", or an nnkern backend."""
    if name == TORCH:
        return TorchTrainer(network, weights, optimizer)
    return NnkernTrainer(name, network, weights, optimizer)


# Untimed pause before each timed epoch. The previous contender's idle workers keep spinning
# after its last call (OpenBLAS's for ~0.1 s, libgomp's default ~5 ms) and steal the cores of
# whoever runs next: measured on 2 cores, a cython epoch right after OpenBLAS calls took
# 185-200 ms, after a 0.3 s pause 136-139 ms.
POOL_IDLE_PAUSE_S = 0.3


def _contender_process(conn, name: str, optimizer: str, threads: int, test_samples: int) -> None:
    """A contender's own process: builds its trainer for each network the parent names and
    times one epoch whenever asked. Messages in: ("network", Network, samples, seed,
    warmup_batches), ("epoch",), ("accuracy",), ("stop",); every answer is ("ok", value) or
    ("failed", reason)."""
    from .data import load_mnist

    trainer = inputs = test = None
    try:
        if name == TORCH:
            set_threads(threads)
        else:  # nnkern's pools only: importing PyTorch would load its libgomp too
            nnkern.set_num_threads(threads)
        (x_unit, y_train), (x_test_unit, y_test) = load_mnist()
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ok", None))
    while True:
        message = conn.recv()
        try:
            if message[0] == "stop":
                return
            if message[0] == "network":
                network, samples, seed, warmup_batches = message[1:]
                trainer = None  # the last network's buffers go before the next one's come
                batches = epoch_batches(network.data(x_unit), y_train, network.batch_size, samples, seed)
                test = (network.data(x_test_unit[:test_samples]), y_test[:test_samples])
                trainer = make_trainer(name, network, initial_weights(network, seed), optimizer)
                inputs = trainer.prepare(batches)
                trainer.reset()  # compile / warm caches before timing; then back to the initial weights
                answer = trainer.train(inputs[:warmup_batches])
            elif message[0] == "epoch":
                trainer.reset()
                start = time.perf_counter()
                loss = trainer.train(inputs)
                answer = (time.perf_counter() - start, loss)
            else:
                answer = trainer.accuracy(*test)
        except Exception as exc:  # one broken contender must not stop the comparison
            trainer = None
            conn.send(("failed", f"{type(exc).__name__}: {exc}"))
            continue
        conn.send(("ok", answer))


class _Contender:
    """The parent's handle on a contender's process (:func:`_contender_process`)."""

    def __init__(self, context, name: str, optimizer: str, threads: int, test_samples: int):
        self.name, self.optimizer = name, optimizer
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_contender_process, daemon=True,
                                       args=(child, name, optimizer, threads, test_samples))
        self.process.start()
        child.close()

    def _answer(self):
        try:
            status, value = self.conn.recv()
        except (EOFError, OSError):
            self.process.join(1.0)
            raise RuntimeError(f"its process ended (exit code {self.process.exitcode})") from None
        if status != "ok":
            raise RuntimeError(value)
        return value

    def ask(self, *message):
        """Send a message and return the answer's value; RuntimeError with the reason when
        the contender failed or its process died."""
        try:
            self.conn.send(message)
        except OSError:  # BrokenPipeError among them
            raise RuntimeError(f"its process ended (exit code {self.process.exitcode})") from None
        return self._answer()

    def started(self) -> None:
        """Wait until the process has loaded MNIST (raises as ask does)."""
        self._answer()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("stop",))
        self.process.join(5.0)
        if self.process.is_alive():
            self.process.kill()


@contextlib.contextmanager
def _contender_processes(names, optimizers, threads: int, test_samples: int, log):
    """One process per (contender, optimizer), started together; yields ({key: _Contender},
    {key: the reason it could not start})."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited thread pools
    log(f"starting {len(names) * len(optimizers)} contender processes")
    contenders = {(name, optimizer): _Contender(context, name, optimizer, threads, test_samples)
                  for optimizer in optimizers for name in names}
    failed = {}
    try:
        for key, contender in list(contenders.items()):
            try:
                contender.started()
            except RuntimeError as exc:
                failed[key] = str(exc)
                contender.stop()
                del contenders[key]
        yield contenders, failed
    finally:
        for contender in contenders.values():
            contender.stop()


def _time_network(network: Network, contenders: dict, failed_to_start: dict, *, samples: int, repeats: int,
                  warmup_batches: int, seed: int, peak_gflops: float, log) -> dict:
    """The comparison of the contenders' processes on one network: each builds the network
    and trains ``warmup_batches`` untimed steps; then they take turns, one timed epoch each,
    ``repeats`` times."""
    failed = dict(failed_to_start)
    warmup_losses, ready = {}, {}
    for key, contender in contenders.items():
        try:
            warmup_losses[key] = contender.ask("network", network, samples, seed, warmup_batches)
            ready[key] = contender
        except RuntimeError as exc:
            failed[key] = str(exc)
    times, losses = defaultdict(list), {}
    for repeat in range(repeats):
        for key, contender in list(ready.items()):  # A B C A B C ...
            time.sleep(POOL_IDLE_PAUSE_S)
            try:
                seconds, losses[key] = contender.ask("epoch")
            except RuntimeError as exc:
                failed[key] = str(exc)
                del ready[key]
                continue
            times[key].append(seconds)
        log(f"{network.name}, {network.inputs}, {network.dtype}: repeat {repeat + 1}/{repeats} done")

    trained = samples - samples % network.batch_size
    rows = []
    for key, contender in ready.items():
        name, optimizer = key
        try:
            accuracy = contender.ask("accuracy")
        except RuntimeError as exc:
            failed[key] = str(exc)
            continue
        reference_loss = warmup_losses.get((REFERENCE, optimizer))
        median = statistics.median(times[key])
        rate = trained / median
        gflops = rate * network.flops_per_sample / 1e9
        rows.append({
            "contender": name,
            "optimizer": optimizer,
            "kind": "peer" if name == TORCH else ("reference" if name == REFERENCE else "backend"),
            "times_s": times[key],
            "median_s": median,
            "samples_per_s": rate,
            "gflops": gflops,
            "fraction_of_peak": gflops / peak_gflops,
            "final_train_loss": losses[key],
            "test_accuracy": accuracy,
            # the loss after the warm-up steps, from the same weights and batches, must be
            # the reference's (float32 with other summation orders: LOSS_RTOL relative)
            "warmup_loss": warmup_losses[key],
            "loss_matches_reference": None if reference_loss is None else bool(
                abs(warmup_losses[key] - reference_loss) <= LOSS_RTOL * abs(reference_loss)),
        })
    by_key = {(r["contender"], r["optimizer"]): r for r in rows}
    for row in rows:
        reference = by_key.get((REFERENCE, row["optimizer"]))
        torch = by_key.get((TORCH, row["optimizer"]))
        row["ratio_to_reference"] = row["samples_per_s"] / reference["samples_per_s"] if reference else None
        row["ratio_to_torch"] = row["samples_per_s"] / torch["samples_per_s"] if torch else None
        # this optimizer's epoch time against SGD's, same contender, same run
        sgd = by_key.get((row["contender"], "sgd"))
        row["time_vs_sgd"] = row["median_s"] / sgd["median_s"] if sgd else None
    several = len({optimizer for _, optimizer in [*contenders, *failed]}) > 1
    return {
        "name": network.name,
        "sizes": list(network.sizes),
        "activation": network.activation,
        "batch_size": network.batch_size,
        "normalize": network.normalize,
        "inputs": network.inputs,
        "dtype": network.dtype,
        "samples_trained": trained,
        "steps": trained // network.batch_size,
        "flops_per_sample": network.flops_per_sample,
        "peak_gflops": peak_gflops,
        "results": rows,
        "failed": {f"{name} {optimizer}" if several else name: reason
                   for (name, optimizer), reason in failed.items()},
    }


def checked_optimizers(optimizers) -> list[str]:
    """``optimizers`` (a name or names from ``OPTIMIZERS``) as a list without repeats;
    ValueError names the unknown ones."""
    optimizers = [optimizers] if isinstance(optimizers, str) else list(optimizers)
    unknown = [name for name in optimizers if name not in OPTIMIZERS]
    if unknown or not optimizers:
        raise ValueError(f"unknown {', '.join(unknown) or 'none given'}; choose from {', '.join(OPTIMIZERS)}")
    return list(dict.fromkeys(optimizers))


def run(
    *,
    backends=None,
    with_torch: bool = True,
    networks=NETWORKS,
    samples: int | None = None,
    repeats: int = 5,
    threads: int | None = None,
    peak_size: int = 2048,
    test_samples: int | None = None,
    warmup_batches: int = 3,
    seed: int = 0,
    optimizers=("sgd",),
    log=None,
) -> dict:
    """Time one epoch (or its first ``samples`` samples) per contender and network, the
    contenders' processes taking turns over ``repeats``; return the whole result as a
    JSON-ready dict.

    Contenders: the reference, the nnkern ``backends`` usable here (default: all; see
    :func:`benchmark_backends`), and PyTorch when ``with_torch`` and importable, each in a
    process of its own. Each first trains ``warmup_batches`` untimed steps (compilation,
    caches) whose loss is compared with the reference's. Each repeat starts from the
    initial weights, so every repeat does the same work and the test accuracy is that after
    one (partial) epoch. ``log`` (a callable taking a line) reports progress.
    ``optimizers``: names from ``OPTIMIZERS``, each contender trained with each.
    """
    optimizers = checked_optimizers(optimizers)
    networks = list(networks)
    log = log or (lambda line: None)
    threads = threads or nnkern.get_num_threads()
    set_threads(threads)
    timed, skipped = benchmark_backends(backends)
    torch_importable = _torch() is not None
    if not (with_torch and torch_importable):
        skipped[TORCH] = "not requested" if torch_importable else "PyTorch cannot be imported"
    names = timed + ([TORCH] if TORCH not in skipped else [])
    samples = MNIST_TRAIN_SAMPLES if samples is None else min(samples, MNIST_TRAIN_SAMPLES)
    test_samples = MNIST_TEST_SAMPLES if test_samples is None else min(test_samples, MNIST_TEST_SAMPLES)

    peaks = {}
    for dtype in dict.fromkeys(network.dtype for network in networks):
        log(f"measuring the GEMM peak ({peak_size}^3 {dtype}, {threads} threads)")
        peaks[dtype] = measure_sgemm_peak(peak_size, dtype=dtype)
    with _contender_processes(names, optimizers, threads, test_samples, log) as (contenders, failed):
        results = [
            _time_network(network, contenders, failed, samples=samples, repeats=repeats,
                          warmup_batches=warmup_batches, seed=seed, peak_gflops=peaks[network.dtype]["gflops"],
                          log=log)
            for network in networks
        ]
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine_info(),
        "versions": versions(),
        "config": {
            "threads": threads,
            "repeats": repeats,
            "samples_per_repeat": samples,
            "test_samples": test_samples,
            "warmup_batches": warmup_batches,
            "optimizers": {name: {"lr": OPTIMIZERS[name]} for name in optimizers},
            "seed": seed,
            "order": "each contender in its own process, taking turns",
            "flops_per_sample_formula": "4*sum(in*out) + 2*sum(in*out over the layers after the first)",
        },
        "peak": peaks.get("float32") or next(iter(peaks.values())),
        "peaks": peaks,
        "skipped": skipped,
        "networks": results,
    }


# ---------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------


def _peak_line(peak: dict) -> str:
    """A measured GEMM peak and where it came from."""
    sources = [f"NumPy's BLAS {peak['blas_gflops']:.1f}"]
    if "nnkern_gflops" in peak:
        sources.append(f"nnkern {peak['nnkern_backend']} {peak['nnkern_gflops']:.1f}")
    return (f"{peak['gflops']:.1f} GFLOP/s {peak['dtype']} (best of {peak['repeats']} {peak['size']}^3 "
            f"products: {', '.join(sources)})")


def format_header(result: dict) -> str:
    m, v, c = result["machine"], result["versions"], result["config"]
    lines = [
        f"machine : {m['cpu']}, {m['cores']} cores, SIMD {' '.join(m['simd']) or 'none found'}",
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        f"threads : {c['threads']} (nnkern, BLAS, PyTorch)   repeats: {c['repeats']}, each contender in its own "
        f"process, taking turns   samples per repeat: {c['samples_per_repeat']}   test samples: {c['test_samples']}",
        *(f"peak    : {_peak_line(peak)}" for peak in result["peaks"].values()),
    ]
    for name, reason in result["skipped"].items():
        lines.append(f"skipped : {name}: {reason}")
    return "\n".join(lines)


def _ratio(value) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def format_table(network_result: dict) -> str:
    n = network_result
    optimizers = list(dict.fromkeys(row["optimizer"] for row in n["results"]))
    several = len(optimizers) > 1
    title = (f"{n['name']}, batch {n['batch_size']}, {n['inputs']}, {n['dtype']}, {n['samples_trained']} samples "
             "per repeat, " + ", ".join(f"{'SGD' if o == 'sgd' else 'Adam'} lr {OPTIMIZERS[o]}" for o in optimizers))
    header = (f"{'contender':<10} {'optimizer':<9} " if several else f"{'contender':<10} ") + (
        f"{'samples/s':>11} {'vs numpy':>9} {'vs torch':>9} {'GFLOP/s':>8} {'of peak':>8} {'test acc':>9}  "
        + ("time vs SGD  " if several else "") + "loss check")
    lines = [title, header, "-" * len(header)]
    for row in n["results"]:
        vs_sgd = "n/a" if row.get("time_vs_sgd") is None else f"{row['time_vs_sgd']:.3f}x"
        lines.append(
            (f"{row['contender']:<10} {row['optimizer']:<9} " if several else f"{row['contender']:<10} ")
            + f"{row['samples_per_s']:>11,.0f} {_ratio(row['ratio_to_reference']):>9} "
            f"{_ratio(row['ratio_to_torch']):>9} {row['gflops']:>8.2f} "
            f"{row['fraction_of_peak']:>8.1%} {row['test_accuracy']:>9.4f}  "
            + (f"{vs_sgd:>11}  " if several else "") + _loss_check(row)
        )
    for name, reason in n["failed"].items():
        lines.append(f"{name:<10} FAILED: {reason}")
    return "\n".join(lines)


def _loss_check(row: dict) -> str:
    """Whether the loss after the warm-up steps was the reference's."""
    if row["loss_matches_reference"] is None:
        return "no reference"
    return "ok" if row["loss_matches_reference"] else f"DIFFERS from numpy ({row['warmup_loss']:.6g})"


def format_report(result: dict) -> str:
    return "\n\n".join([format_header(result), *(format_table(n) for n in result["networks"])])


def plot(result: dict, path) -> None:
    """A bar chart of median samples/s per contender, one panel per network (needs
    matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    networks = result["networks"]
    fig, axes = plt.subplots(1, len(networks), figsize=(5 * len(networks), 4), squeeze=False)
    for ax, n in zip(axes[0], networks):
        several = len({r["optimizer"] for r in n["results"]}) > 1
        names = [f"{r['contender']}\n{r['optimizer']}" if several else r["contender"] for r in n["results"]]
        rates = [r["samples_per_s"] for r in n["results"]]
        bars = ax.bar(names, rates, color=["grey" if r["kind"] != "backend" else "tab:blue" for r in n["results"]])
        for bar, row in zip(bars, n["results"]):
            ratio = row["ratio_to_reference"]
            ax.annotate(f"{ratio:.2f}x" if ratio else "", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=8)
        ax.set_title(f"{n['name']} (batch {n['batch_size']})\n{n['inputs']}, {n['dtype']}", fontsize=9)
        ax.set_ylabel("samples/s (median)")
    c = result["config"]
    fig.suptitle(f"nnkern bench: MNIST training, {c['samples_per_repeat']} samples per repeat, "
                 f"{', '.join(c['optimizers'])}, "
                 f"{c['threads']} threads, {result['machine']['cpu']} (reference and PyTorch in grey)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------
# Per-kernel profile of one training step
# ---------------------------------------------------------------------------------------


_UPDATE_KERNELS = frozenset(k for k in ("sgd_update", "momentum_update", "adagrad_update", "rmsprop_update",
                                         "adadelta_update", "adam_update"))


def _call_label(kernel: str, args) -> str:
    """A readable name for one raw kernel call: what it computes, at what shape. Optimizer
    updates get one label for all parameters."""
    def shape(a):
        return "x".join(map(str, a.shape))

    if kernel in _UPDATE_KERNELS:
        return f"{kernel} (every parameter)"
    if kernel == "matmul":
        a, b, trans_a, trans_b = args[:4]
        what = "x.T @ dY (weight grad)" if trans_a else "dY @ W.T (input grad)" if trans_b else "a @ b"
        return f"matmul {what} {shape(a)}{'ᵀ' if trans_a else ''} @ {shape(b)}{'ᵀ' if trans_b else ''}"
    if kernel == "linear":
        x, w, _b, act = args[:4]
        return f"linear+{act} {shape(x)} @ {shape(w)}"
    if kernel in ("activation", "activation_grad"):
        act = args[0]
        arrays = [a for a in args[1:] if hasattr(a, "shape")]
        return f"{kernel} {act} {shape(arrays[0])}"
    first = next((a for a in args if hasattr(a, "shape")), None)
    return f"{kernel} {shape(first)}" if first is not None else kernel


@contextlib.contextmanager
def _timed_kernels(backend: str):
    """Wrap every raw kernel of ``backend`` with a timer for the duration of the block;
    yields a dict it fills when the block ends: {call label: [total seconds, calls]}, in
    the order of the first call. A kernel called by another kernel (the reference's
    ``linear`` calls its ``activation``) counts as part of its caller."""
    from ._backend import backend_module
    from .backends import KERNELS

    module = backend_module(backend)
    originals = {name: getattr(module, name) for name in KERNELS}
    # Keyed by kernel and argument shapes (cheap to build in the timed loop); the readable
    # labels are made once at the end.
    totals = defaultdict(lambda: [0.0, 0])
    example_args = {}
    depth = [0]

    def timed(name, kernel):
        @functools.wraps(kernel)
        def wrapper(*args):
            if depth[0]:
                return kernel(*args)
            depth[0] += 1
            try:
                start = time.perf_counter()
                value = kernel(*args)
                elapsed = time.perf_counter() - start
            finally:
                depth[0] -= 1
            key = (name, *(a.shape if hasattr(a, "shape") else a for a in args))
            entry = totals[key]
            entry[0] += elapsed
            entry[1] += 1
            example_args.setdefault(key, args)
            return value

        return wrapper

    labelled = {}
    try:
        for name, kernel in originals.items():
            setattr(module, name, timed(name, kernel))
        yield labelled
    finally:
        for name, kernel in originals.items():
            setattr(module, name, kernel)
        for key, (total, calls) in totals.items():
            entry = labelled.setdefault(_call_label(key[0], example_args[key]), [0.0, 0])
            entry[0] += total
            entry[1] += calls


def profile_step(step, backend: str, steps: int = 50, warmup: int = 5) -> dict:
    """Where one training step's time goes, kernel by kernel.

    ``step`` is a callable doing one training step (forward, loss, backward, update) with
    nnkern ops on ``backend``. Runs it ``warmup`` times untimed, then ``steps`` times with
    every raw kernel call timed. Returns ``{"step_s": mean step time, "kernels": [{"call",
    "calls_per_step", "s_per_step", "fraction"}, ...] (in the order of the step),
    "other_s", "other_fraction"}``; "other" is the time outside kernels: Python, the ops
    layer's checks, allocation (and the timers themselves, about a microsecond per call).
    """
    for _ in range(warmup):
        step()
    with _timed_kernels(backend) as totals:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        step_s = (time.perf_counter() - start) / steps
    kernels = [{"call": label, "calls_per_step": calls / steps, "s_per_step": total / steps,
                "fraction": total / steps / step_s} for label, (total, calls) in totals.items()]
    other = step_s - sum(k["s_per_step"] for k in kernels)
    return {"backend": backend, "steps": steps, "step_s": step_s, "kernels": kernels,
            "other_s": other, "other_fraction": other / step_s}


def profile_model(model, xb, yb, optimizer, loss="cross_entropy", *, steps: int = 50, warmup: int = 5) -> dict:
    """:func:`profile_step` of ``model.train_step(xb, yb, optimizer, loss)`` on the model's
    backend. The steps do train the model (``steps + warmup`` updates)."""
    return profile_step(lambda: model.train_step(xb, yb, optimizer, loss), model.backend, steps, warmup)


def profile_fused_step(step, xb, yb, *, steps: int = 50, warmup: int = 5) -> dict:
    """Where a fused training step's time goes, phase by phase: ``step`` is a function from
    :func:`nnkern.engine.fused_train_step` that can time its phases (``step.profiled``).
    The same structure as :func:`profile_step`, each phase standing for a kernel call;
    "other" is the time outside the compiled step (the Python call, starting the threads)."""
    for _ in range(warmup):
        step(xb, yb)
    names = step.phase_names()
    totals = [0.0] * len(names)
    start = time.perf_counter()
    for _ in range(steps):
        phases = step.profiled(xb, yb)[2]
        if len(phases) != len(names):
            raise RuntimeError(f"fused step timed {len(phases)} phases, named {len(names)}")
        totals = [total + seconds for total, seconds in zip(totals, phases)]
    step_s = (time.perf_counter() - start) / steps
    kernels = [{"call": name, "calls_per_step": 1, "s_per_step": total / steps, "fraction": total / steps / step_s}
               for name, total in zip(names, totals)]
    other = step_s - sum(k["s_per_step"] for k in kernels)
    return {"steps": steps, "step_s": step_s, "kernels": kernels, "other_s": other, "other_fraction": other / step_s}


def profile_networks(*, backends=None, networks=NETWORKS, steps: int = 50, threads: int | None = None,
                     seed: int = 0) -> list[dict]:
    """:func:`profile_step` of a training step of each network on each backend (layer by
    layer, kernel by kernel), and :func:`profile_fused_step` of the fused step where the
    backend's can time its phases."""
    from .data import load_mnist

    set_threads(threads or nnkern.get_num_threads())
    timed, _ = benchmark_backends(backends)
    (x_unit, y_train), _ = load_mnist()
    profiles = []
    for network in networks:
        xb, yb = epoch_batches(network.data(x_unit), y_train, network.batch_size, network.batch_size, seed)[0]
        about = {"network": network.name, "batch_size": network.batch_size, "inputs": network.inputs,
                 "dtype": network.dtype}
        for backend in timed:
            trainer = NnkernTrainer(backend, network, initial_weights(network, seed))
            trainer.reset()
            time.sleep(POOL_IDLE_PAUSE_S)  # the last backend's idle BLAS workers stop spinning first
            profile = profile_model(trainer.model, xb, yb, trainer.optimizer, trainer.loss, steps=steps)
            profiles.append({**about, "engine": "layer by layer", **profile})
            trainer.prepare([(xb, yb)])  # builds the fused step, where the backend has one
            fused = trainer.fused_step
            if fused is not None and hasattr(fused, "profiled"):
                trainer.reset()
                time.sleep(POOL_IDLE_PAUSE_S)
                profiles.append({**about, "backend": backend, "engine": "fused step",
                                 **profile_fused_step(fused, xb, yb, steps=steps)})
    return profiles


def format_profile(profile: dict) -> str:
    """A profile as a text table (``network`` and ``batch_size`` are shown when present, as
    :func:`profile_networks` adds them)."""
    where = f"{profile['network']} on {profile['backend']}" if "network" in profile else profile["backend"]
    if "inputs" in profile:
        where += f", {profile['inputs']}, {profile['dtype']}"
    if "engine" in profile:
        where += f" ({profile['engine']})"
    fused = profile.get("engine") == "fused step"
    batch = f"batch {profile['batch_size']}, " if "batch_size" in profile else ""
    lines = [f"{where}: {profile['step_s'] * 1e3:.3f} ms per step ({batch}mean of {profile['steps']} steps)"]
    width = max(58, *(len(k["call"]) for k in profile["kernels"]))
    lines.append(f"  {'phase' if fused else 'kernel call':<{width}} {'calls':>5} {'ms/step':>8} {'of step':>8}")
    for k in profile["kernels"]:
        lines.append(f"  {k['call']:<{width}} {k['calls_per_step']:>5.0f} {k['s_per_step'] * 1e3:>8.3f} "
                     f"{k['fraction']:>8.1%}")
    other = "other (the Python call, starting the threads)" if fused else "other (Python, ops-layer checks, allocation)"
    lines.append(f"  {other:<{width}} {'':>5} {profile['other_s'] * 1e3:>8.3f} {profile['other_fraction']:>8.1%}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

QUICK = {"samples": 6000, "repeats": 3, "peak_size": 1024}
PROFILE_STEPS = {"quick": 20, "full": 100}


def _names(value) -> list[str] | None:
    """--backends as a list of names: accepts "a,b", ["a,b", "c"] or None."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return [name.strip() for item in items for name in item.split(",") if name.strip()]


# nnkern bench's options that describe the user's own network (custom_network's arguments)
CUSTOM_OPTIONS = ("hidden", "activation", "batch_size", "normalize", "dtype")


def networks_of(args) -> list[Network]:
    """The networks ``nnkern bench`` measures: the built-in ones, and the user's own when
    any of CUSTOM_OPTIONS is given (the others then take custom_network's defaults);
    ``no_builtin`` leaves the built-in ones out. ValueError names a bad option."""
    chosen = {name: getattr(args, name) for name in CUSTOM_OPTIONS if getattr(args, name, None) is not None}
    networks = [] if getattr(args, "no_builtin", False) else list(NETWORKS)
    if chosen:
        networks.append(custom_network(**chosen))
    if not networks:
        raise ValueError("--no-builtin leaves nothing to measure: describe a network (--hidden, --activation, "
                         "--batch-size, --normalize, --dtype)")
    return networks


def run_cli(args) -> int:
    """``nnkern bench``: ``args`` is the argparse Namespace with ``quick``, ``json``,
    ``backends``, ``repeats``, ``threads``, ``plot`` (and optionally ``profile``,
    ``optimizers``, CUSTOM_OPTIONS and ``no_builtin``)."""
    try:
        networks = networks_of(args)
    except ValueError as exc:
        print(f"nnkern bench: error: {exc}", file=sys.stderr)
        return 2
    names = _names(getattr(args, "backends", None))
    with_torch = names is None or TORCH in names
    backends = None if names is None else [n for n in names if n != TORCH]
    try:
        benchmark_backends(backends)
    except ValueError as exc:
        print(f"nnkern bench: error: --backends: {exc} (or torch)", file=sys.stderr)
        return 2
    settings = dict(QUICK) if getattr(args, "quick", False) else {}
    try:
        settings["optimizers"] = checked_optimizers(_names(getattr(args, "optimizers", None)) or ["sgd"])
    except ValueError as exc:
        print(f"nnkern bench: error: --optimizers: {exc}", file=sys.stderr)
        return 2
    if getattr(args, "repeats", None) is not None:
        settings["repeats"] = args.repeats
    threads = getattr(args, "threads", None)

    def log(line):
        print(line, file=sys.stderr, flush=True)

    result = run(backends=backends, with_torch=with_torch, networks=networks, threads=threads, log=log, **settings)
    print(format_report(result))
    if getattr(args, "profile", False):
        result["profile"] = profile_networks(backends=backends, networks=networks, threads=threads,
                                             steps=PROFILE_STEPS["quick" if getattr(args, "quick", False) else "full"])
        print()
        print("\n\n".join(format_profile(p) for p in result["profile"]))
    if getattr(args, "json", None):
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    if getattr(args, "plot", None):
        try:
            plot(result, args.plot)
        except ImportError:
            print("--plot needs matplotlib (pip install nnkern[plot])", file=sys.stderr)
            return 1
        print(f"wrote {args.plot}")
    return 0
