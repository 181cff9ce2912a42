"""The interleaved end-to-end comparison: each contender in a process of its own, taking
turns over the repeats, one timed epoch each."""

from __future__ import annotations

import contextlib
import statistics
import time
from collections import defaultdict

import nnkern

from ..data import load_mnist
from .machine import (
    REFERENCE,
    TORCH,
    benchmark_backends,
    import_torch,
    machine_info,
    measure_sgemm_peak,
    set_threads,
    versions,
    wait_for_idle_pools,
)
from .networks import NETWORKS, Network, epoch_batches, initial_weights
from .trainers import OPTIMIZERS, make_trainer

SCHEMA = "nnkern-bench/2"
LOSS_RTOL = 1e-3
MNIST_TRAIN_SAMPLES, MNIST_TEST_SAMPLES = 60_000, 10_000  # the canonical split


def _contender_process(conn, name: str, optimizer: str, threads: int, test_samples: int) -> None:
    """A contender's own process: builds its trainer for each network the parent names and
    times one epoch whenever asked. Messages in: ("network", Network, samples, seed,
    warmup_batches), ("epoch",), ("accuracy",), ("stop",); every answer is ("ok", value) or
    ("failed", reason)."""
    trainer = inputs = test = None
    try:
        # the NumPy reference's BLAS too: a spawned process starts OpenBLAS on every core
        set_threads(threads, with_torch=name == TORCH)
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
            wait_for_idle_pools()
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
    torch_importable = import_torch() is not None
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
