"""Where one training step's time goes: each kernel call of the layer-by-layer step, each
phase of the fused step."""

from __future__ import annotations

import contextlib
import functools
import time
from collections import defaultdict

import nnkern

from .._backend import backend_module
from ..backends import KERNELS
from ..data import load_mnist
from .machine import benchmark_backends, set_threads, wait_for_idle_pools
from .networks import NETWORKS, epoch_batches, initial_weights
from .trainers import NnkernTrainer

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
            wait_for_idle_pools()  # the last backend's idle BLAS workers stop spinning first
            profile = profile_model(trainer.model, xb, yb, trainer.optimizer, trainer.loss, steps=steps)
            profiles.append({**about, "engine": "layer by layer", **profile})
            trainer.prepare([(xb, yb)])  # builds the fused step, where the backend has one
            fused = trainer.fused_step
            if fused is not None and hasattr(fused, "profiled"):
                trainer.reset()
                wait_for_idle_pools()
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
