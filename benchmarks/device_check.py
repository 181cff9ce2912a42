#!/usr/bin/env python3
"""nnkern on a machine with an NVIDIA GPU, in one run; and its dry run on any machine.

    benchmarks/device_check.sh                      # on the GPU machine: install, then this
    benchmarks/device_check.sh --dry-run --no-install   # anywhere: Numba's CUDA simulator, tiny sizes

Parts, in this order, each given what is left of ``--budget`` seconds (a part that cannot
start in time is recorded as skipped, and the JSON is rewritten after every part, so a run
cut short still leaves what it measured):

1. ``mnist``: one MNIST training epoch (60,000 samples, SGD lr 0.1, float32, the same
   initial weights and the same shuffled order for every contender) of both networks of
   ``nnkern bench`` (784-100-10 sigmoid, 784-256-128-64-20-10 ReLU) at batch 64 and 100:
   the "cuda" backend's device engine (``fit``'s path: ``run_epoch``) with its persistent
   executor (with its kernels' default register cap and without one) and, once, with one
   launch per phase, against PyTorch CUDA eager (the data on
   the GPU, batches gathered there, the loss summed on the GPU and read once per epoch).
   Median of ``--repeats`` epochs after an untimed one (compilation, caches).
2. ``gemm``: the "cuda" backend's GEMM against cuBLAS (``torch.matmul``, TF32 off: FP32)
   at the training shapes and 4096^3: device time per product from CUDA events around
   back-to-back launches (at the small shapes that is the launch rate a Python caller
   gets), and the error against the other.
3. ``cuda-tests``: ``pytest tests/cuda`` on the device (among them fits, steps and an
   ``MLPClassifier`` with sample weights and L2 on the weights alone, against the layer
   path and the Cython engine: tests/cuda/test_cuda_sample_weight.py).
4. ``cpu-scaling``: ``nnkern bench --quick`` of the 784-256-128-64-20-10 network (batch 64,
   pixels / 255) at 1, 2, 4, 8 and 16 threads (those this machine has), every CPU backend
   and PyTorch, parsed from its ``--json``.
5. ``torch-compile``: the MNIST epochs with ``torch.compile(model)``, in a subprocess
   stopped at the budget's end (its compilation may not fit).

Writes ``device_check.json`` (everything) and ``device_check.md`` (a summary table against
the targets, then a table per part) into ``--out``.

``--dry-run`` runs the same code on tiny sizes under ``NUMBA_ENABLE_CUDASIM=1`` (set here,
before Numba is imported): networks 24 wide on one row of each MNIST image, 16 samples,
tiny GEMMs, one simulator test, ``nnkern bench`` of a 784-16-10 network on the NumPy
backend at 1 and 2 threads;
contenders that need a GPU (PyTorch CUDA, cuBLAS, torch.compile) are recorded as not
available. Its timings mean nothing; CI runs it so that the script is known to work before
a GPU is lent.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCHEMA = "nnkern-device-check/1"
DEFAULT_BUDGET_S = 390  # the install before it takes about a minute: all under 8 minutes
BATCH_SIZES = (64, 100)
THREAD_COUNTS = (1, 2, 4, 8, 16)
GEMM_SHAPES = (  # (name, m, n, k, trans_a, trans_b): op(a) is m x k, op(b) k x n
    ("x @ W, (64x784)@(784x256)", 64, 256, 784, False, False),
    ("x.T @ dY, (784x64)@(64x256)", 784, 256, 64, True, False),
    ("dY @ W.T, (64x256)@(256x784)", 64, 784, 256, False, True),
    ("x @ W, (100x784)@(784x100)", 100, 100, 784, False, False),
    ("4096^3", 4096, 4096, 4096, False, False),
)
DRY_GEMM_SHAPES = (("(8x24)@(24x12)", 8, 12, 24, False, False), ("x.T @ dY, (24x8)@(8x12)", 24, 12, 8, True, False))
DRY = {"samples": 16, "width": 24, "batch_sizes": (16,), "repeats": 0, "threads": (1, 2)}  # one epoch each
TARGETS = {"mnist_vs_torch_eager": 1.0, "gemm_4096_of_cublas": 0.5, "gemm_training_vs_cublas": 1.0}


def log(message: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Budget:
    """What is left of the run's time."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


# ---------------------------------------------------------------------------------------
# The machine
# ---------------------------------------------------------------------------------------


def machine(torch, dry_run: bool) -> dict:
    from numba import cuda

    from nnkern import bench

    info = {"host": bench.machine_info(), "versions": bench.versions(), "python_executable": sys.executable}
    if dry_run:
        info["gpu"] = {"simulated": True, "name": "Numba CUDA simulator"}
        return info
    device = cuda.get_current_device()
    gpu = {"name": device.name.decode() if isinstance(device.name, bytes) else str(device.name),
           "compute_capability": list(device.compute_capability),
           "multiprocessors": int(device.MULTIPROCESSOR_COUNT)}
    if torch is not None and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu.update(torch_name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                   torch_cuda=torch.version.cuda)
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        gpu["nvidia_smi"] = smi.stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        gpu["nvidia_smi"] = f"not available ({exc})"
    info["gpu"] = gpu
    return info


def torch_cuda(torch) -> str | None:
    """Why PyTorch CUDA cannot be a contender here, or None when it can."""
    if torch is None:
        return "PyTorch cannot be imported"
    if not torch.cuda.is_available():
        return "PyTorch sees no CUDA device (torch.cuda.is_available() is False)"
    return None


# ---------------------------------------------------------------------------------------
# 1. MNIST epochs
# ---------------------------------------------------------------------------------------


def mnist_data(dry_run: bool):
    from nnkern.data import load_mnist

    (x, y), (x_test, y_test) = load_mnist(dtype="float32")
    y, y_test = y.astype("int64"), y_test.astype("int64")
    if dry_run:  # one row of pixels from the middle of each image
        cols = slice(14 * 28 + 2, 14 * 28 + 2 + DRY["width"])
        n = DRY["samples"]
        return (x[:n, cols].copy(), y[:n]), (x_test[:n, cols].copy(), y_test[:n])
    return (x, y), (x_test, y_test)


def networks(dry_run: bool, batch_sizes):
    from nnkern import bench

    for network in (n for n in bench.NETWORKS if n.normalize == "unit"):  # MNIST as it comes: pixels / 255
        if dry_run:
            width = DRY["width"]
            sizes = (width, 12, 10) if len(network.sizes) == 3 else (width, 16, 12, 10)
            network = dataclasses.replace(network, name=f"{'-'.join(map(str, sizes))} {network.activation}",
                                          sizes=sizes)
        for batch in batch_sizes:
            yield dataclasses.replace(network, batch_size=batch)


def orders(n: int, epochs: int, seed: int = 0):
    """The shuffled sample order of each epoch, as a DataLoader with this seed draws them."""
    from nnkern.data import DataLoader

    import numpy as np

    loader = DataLoader(np.zeros((n, 1)), np.zeros(n), 1, shuffle=True, seed=seed)
    return [loader.epoch_order() for _ in range(epochs)]


def nnkern_epochs(network, weights, train, test, executor: str, epochs: int, max_registers=None,
                  seed: int = 0) -> dict:
    """Epoch times of the "cuda" engine with ``executor`` (the first epoch untimed), its
    kernels built with ``max_registers`` (None: cuda_train's default)."""
    from nnkern import bench
    from nnkern.data import DataLoader
    from nnkern.engine import fused_train_step

    trainer = bench.NnkernTrainer("cuda", network, weights)
    trainer.reset()
    x, y = train
    settings = {"NNKERN_CUDA_EXECUTOR": executor,
                **({} if max_registers is None else {"NNKERN_CUDA_MAX_REGISTERS": str(max_registers)})}
    previous = {name: os.environ.get(name) for name in settings}
    os.environ.update(settings)
    try:
        step = fused_train_step(trainer.model, trainer.optimizer, trainer.loss, x, y, network.batch_size)
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    if step is None or not hasattr(step, "run_epoch"):
        raise RuntimeError("the cuda device engine did not take this model")
    loader = DataLoader(x, y, network.batch_size, shuffle=True, seed=seed)
    times, losses = [], []
    for _ in range(epochs):
        start = time.perf_counter()
        results = step.run_epoch(loader)  # returns after the epoch's one read-back
        times.append(time.perf_counter() - start)
        losses.append(sum(value * rows for value, _, rows, _ in results) / sum(rows for _, _, rows, _ in results))
    return {"epoch_s": times[1:], "first_epoch_s": times[0], "epoch_losses": losses,
            "executor": step.trainer.executor, "launches_per_step": step.trainer.launches_per_step(),
            "max_registers": step.trainer.max_registers,
            "phases_per_step": len(step.trainer.phases), "grid_blocks": step.trainer.grid_blocks,
            "test_accuracy": trainer.accuracy(*test)}


def torch_epoch(torch, model, loss_fn, optimizer, x, y, order, batch: int):
    """One epoch in a PyTorch user's best eager style: data on the GPU, batches gathered
    there, the loss summed on the GPU, one synchronisation at the end. Returns the mean loss."""
    total = torch.zeros((), device=x.device)
    for start in range(0, len(order), batch):
        index = order[start:start + batch]
        xb, yb = x[index], y[index]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        optimizer.step()
        total += loss.detach() * len(index)
    return float(total) / len(order)


def torch_epochs(network, weights, train, test, epochs: int, compile_model: bool = False, seed: int = 0) -> dict:
    from nnkern import bench

    torch = bench.import_torch()
    torch.backends.cuda.matmul.allow_tf32 = False  # FP32, as nnkern computes
    torch.backends.cudnn.allow_tf32 = False
    trainer = bench.TorchTrainer(network, weights)
    trainer.model.to("cuda")
    trainer.reset()
    model = torch.compile(trainer.model) if compile_model else trainer.model
    x = torch.from_numpy(train[0]).cuda()
    y = torch.from_numpy(train[1]).cuda()
    epoch_orders = [torch.from_numpy(o).cuda() for o in orders(len(train[0]), epochs, seed)]
    times, losses = [], []
    for order in epoch_orders:
        torch.cuda.synchronize()
        start = time.perf_counter()
        losses.append(torch_epoch(torch, model, trainer.loss, trainer.optimizer, x, y, order, network.batch_size))
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    with torch.no_grad():
        logits = trainer.model(torch.from_numpy(test[0]).cuda())
        accuracy = float((logits.argmax(dim=1).cpu().numpy() == test[1]).mean())
    return {"epoch_s": times[1:], "first_epoch_s": times[0], "epoch_losses": losses, "test_accuracy": accuracy}


def _summarise(row: dict, samples: int) -> dict:
    median = statistics.median(row["epoch_s"]) if row.get("epoch_s") else math.nan
    row.update(median_epoch_s=median, samples_per_s=samples / median if median else math.nan)
    return row


def part_mnist(ctx, budget: Budget) -> dict:
    from nnkern import bench

    train, test = mnist_data(ctx.dry_run)
    batch_sizes = DRY["batch_sizes"] if ctx.dry_run else BATCH_SIZES
    repeats = DRY["repeats"] if ctx.dry_run else ctx.repeats
    torch_reason = torch_cuda(ctx.torch)
    rows = []
    for network in networks(ctx.dry_run, batch_sizes):
        if budget.left() < 20:
            rows.append({"network": network.name, "batch_size": network.batch_size, "status": "skipped: out of time"})
            continue
        weights = bench.initial_weights(network)
        # (contender, executor, register cap, timed epochs); the uncapped kernels are
        # built once, for every network (the cap is what to tune first on a new GPU)
        contenders = [("nnkern cuda", "persistent", None, repeats), ("nnkern cuda", "launches", None, min(1, repeats)),
                      ("torch eager", None, None, repeats)]
        if not ctx.dry_run:
            contenders.insert(1, ("nnkern cuda", "persistent", 0, repeats))
        elif network.sizes != next(networks(True, batch_sizes)).sizes:
            del contenders[1]  # the dry run tries the launches executor on the first network only
        for contender, executor, max_registers, timed in contenders:
            row = {"network": network.name, "batch_size": network.batch_size, "contender": contender}
            if executor:
                cap = ", registers uncapped" if max_registers == 0 else ""
                row["contender"] = f"{contender} ({executor}{cap})"
            log(f"mnist: {network.name}, batch {network.batch_size}: {row['contender']}")
            try:
                if contender == "torch eager":
                    if torch_reason:
                        rows.append({**row, "status": f"not available: {torch_reason}"})
                        continue
                    result = torch_epochs(network, weights, train, test, 1 + timed)
                else:
                    result = nnkern_epochs(network, weights, train, test, executor, 1 + timed, max_registers)
                rows.append(_summarise({**row, "status": "ok", **result}, len(train[0])))
            except Exception as exc:  # one contender's failure must not stop the others
                rows.append({**row, "status": f"error: {type(exc).__name__}: {exc}",
                             "traceback": traceback.format_exc(limit=8)})
    for row in rows:  # each cuda row against torch eager at the same network and batch
        peer = next((r for r in rows if r.get("contender") == "torch eager" and r.get("status") == "ok"
                     and r["network"] == row["network"] and r["batch_size"] == row["batch_size"]), None)
        if peer is not None and row.get("status") == "ok" and row is not peer:
            row["speedup_vs_torch_eager"] = peer["median_epoch_s"] / row["median_epoch_s"]
    failed = any(r.get("status", "").startswith("error") for r in rows)
    return {"status": "failed" if failed else "ok", "samples_per_epoch": len(train[0]), "results": rows}


# ---------------------------------------------------------------------------------------
# 2. GEMM against cuBLAS
# ---------------------------------------------------------------------------------------


def _relative_error(got, want) -> float:
    import numpy as np

    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def part_gemm(ctx, budget: Budget) -> dict:
    import numpy as np
    from numba import cuda

    from nnkern._backend import backend_module

    matmul = backend_module("cuda").matmul  # the raw kernel: device arrays are used in place
    shapes = DRY_GEMM_SHAPES if ctx.dry_run else GEMM_SHAPES
    torch_reason = torch_cuda(ctx.torch)
    rng = np.random.default_rng(0)
    rows = []
    for name, m, n, k, trans_a, trans_b in shapes:
        if budget.left() < 10:
            rows.append({"shape": name, "status": "skipped: out of time"})
            continue
        log(f"gemm: {name}")
        a = rng.standard_normal((k, m) if trans_a else (m, k), dtype=np.float32)
        b = rng.standard_normal((n, k) if trans_b else (k, n), dtype=np.float32)
        flops = 2.0 * m * n * k
        repeats = 3 if ctx.dry_run else max(5, min(200, int(2e11 / flops)))
        row = {"shape": name, "m": m, "n": n, "k": k, "flops": flops, "repeats": repeats}
        a_dev, b_dev = cuda.to_device(a), cuda.to_device(b)
        out = cuda.to_device(np.full((m, n), np.nan, np.float32))  # poisoned: every element must be written
        matmul(a_dev, b_dev, trans_a, trans_b, out)  # compiles
        cuda.synchronize()
        got = out.copy_to_host()
        start, end = cuda.event(), cuda.event()
        start.record()
        wall = time.perf_counter()
        for _ in range(repeats):
            matmul(a_dev, b_dev, trans_a, trans_b, out)
        end.record()
        end.synchronize()
        wall = (time.perf_counter() - wall) / repeats
        device_s = math.nan if ctx.dry_run else start.elapsed_time(end) / 1e3 / repeats  # the simulator has no clock
        row["nnkern_cuda"] = {"s_per_product": device_s, "wall_s_per_call": wall, "tflops": flops / device_s / 1e12}
        if torch_reason:
            row["cublas"] = {"status": f"not available: {torch_reason}"}
            want = (a.T if trans_a else a).astype(np.float64) @ (b.T if trans_b else b).astype(np.float64)
        else:
            torch = ctx.torch
            torch.backends.cuda.matmul.allow_tf32 = False
            ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
            op_a, op_b = (ta.t() if trans_a else ta), (tb.t() if trans_b else tb)
            t_out = torch.empty((m, n), device="cuda")
            torch.matmul(op_a, op_b, out=t_out)
            torch.cuda.synchronize()
            t_start, t_end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t_start.record()
            for _ in range(repeats):
                torch.matmul(op_a, op_b, out=t_out)
            t_end.record()
            t_end.synchronize()
            cublas_s = t_start.elapsed_time(t_end) / 1e3 / repeats
            row["cublas"] = {"s_per_product": cublas_s, "tflops": flops / cublas_s / 1e12}
            row["of_cublas"] = cublas_s / device_s
            want = t_out.cpu().numpy()
        row["unwritten"] = int(np.isnan(got).sum()) if not np.isnan(want).any() else None
        row["relative_error"] = _relative_error(got, want)
        row["status"] = "ok" if row["relative_error"] < 1e-4 and not row["unwritten"] else "wrong result"
        rows.append(row)
    failed = any(r.get("status") == "wrong result" for r in rows)
    return {"status": "failed" if failed else "ok", "method": "CUDA events around back-to-back launches; FP32 "
            "(TF32 off); relative error = |nnkern - other| / |other| (Frobenius)", "results": rows}


# ---------------------------------------------------------------------------------------
# 3. The CUDA tests on the device, 4. CPU thread scaling (subprocesses)
# ---------------------------------------------------------------------------------------


def _run(command, timeout: float, env=None) -> dict:
    start = time.perf_counter()
    try:
        done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=max(1.0, timeout),
                              env=env)
        output = done.stdout + done.stderr
        return {"returncode": done.returncode, "seconds": time.perf_counter() - start,
                "output_tail": output[-3000:]}
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stdout or b"") + (exc.stderr or b"")
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"returncode": None, "seconds": time.perf_counter() - start, "output_tail": tail[-3000:],
                "timed_out": True}


def part_cuda_tests(ctx, budget: Budget) -> dict:
    target = (["tests/cuda/test_cuda_kernels.py", "-k", "available_and_selectable"] if ctx.dry_run
              else ["tests/cuda"])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *target]
    log(f"cuda-tests: {' '.join(command[1:])}")
    result = _run(command, min(300.0, budget.left() - 5))
    summary = next((line for line in reversed(result["output_tail"].splitlines()) if " in " in line), "")
    status = ("timed out" if result.get("timed_out") else "passed" if result["returncode"] == 0 else "failed")
    return {"status": status, "command": " ".join(command[1:]), "summary": summary.strip("= "), **result}


def part_cpu_scaling(ctx, budget: Budget) -> dict:
    from nnkern._threads import default_num_threads

    cores = default_num_threads()
    wanted = DRY["threads"] if ctx.dry_run else THREAD_COUNTS
    counts = [t for t in wanted if t <= cores]
    backends = "numpy" if ctx.dry_run else "numpy,cython,numba,torch"
    # one network: 784-256-128-64-20-10 ReLU, batch 64, pixels / 255 (the dry run: 784-16-10)
    network_args = ["--no-builtin", "--normalize", "unit", *(["--hidden", "16"] if ctx.dry_run else [])]
    env = {**os.environ, "NUMBA_CACHE_DIR": str(ctx.out / "numba-cache")}  # compile once for all runs
    runs, rows = [], []
    for threads in counts:
        if budget.left() < 30:
            runs.append({"threads": threads, "status": "skipped: out of time"})
            continue
        path = ctx.out / f"bench_t{threads}.json"
        command = [sys.executable, "-m", "nnkern", "bench", "--quick", "--repeats", "1" if ctx.dry_run else "2",
                   "--threads", str(threads), "--backends", backends, "--json", str(path), *network_args]
        log(f"cpu-scaling: {' '.join(command[1:])}")
        result = _run(command, budget.left() - 5, env)
        if result["returncode"] != 0 or not path.exists():
            runs.append({"threads": threads, "status": "failed", **result})
            continue
        bench = json.loads(path.read_text())
        runs.append({"threads": threads, "status": "ok", "seconds": result["seconds"],
                     "sgemm_peak_gflops": bench["peak"]["gflops"], "skipped": bench["skipped"]})
        for network in bench["networks"]:
            for r in network["results"]:
                rows.append({"threads": threads, "network": network["name"], "batch_size": network["batch_size"],
                             "contender": r["contender"], "samples_per_s": r["samples_per_s"],
                             "vs_numpy": r["ratio_to_reference"], "loss_matches_reference": r["loss_matches_reference"]})
    for row in rows:  # speed-up over the same contender on one thread
        one = next((r for r in rows if r["threads"] == 1 and r["network"] == row["network"]
                    and r["contender"] == row["contender"]), None)
        row["vs_1_thread"] = row["samples_per_s"] / one["samples_per_s"] if one else None
    failed = any(r["status"] == "failed" for r in runs)
    return {"status": "failed" if failed else "ok", "cores": cores,
            "not_run": [t for t in wanted if t > cores], "runs": runs, "results": rows}


# ---------------------------------------------------------------------------------------
# 5. torch.compile, in a subprocess that the budget can stop
# ---------------------------------------------------------------------------------------


def part_torch_compile(ctx, budget: Budget) -> dict:
    reason = torch_cuda(ctx.torch)
    if reason:
        return {"status": f"not available: {reason}"}
    if budget.left() < 60:
        return {"status": "skipped: out of time"}
    path = ctx.out / "torch_compile.json"
    command = [sys.executable, __file__, "--torch-compile-worker", str(path), "--repeats", str(ctx.repeats)]
    log(f"torch-compile: in a subprocess, {budget.left() - 10:.0f} s at most")
    result = _run(command, budget.left() - 10)
    if result.get("timed_out"):
        return {"status": f"did not finish within {result['seconds']:.0f} s (compilation included)", **result}
    if result["returncode"] != 0 or not path.exists():
        return {"status": "failed", **result}
    return {"status": "ok", "seconds": result["seconds"], "results": json.loads(path.read_text())}


def torch_compile_worker(path: str, repeats: int) -> int:
    from nnkern import bench

    train, test = mnist_data(False)
    rows = []
    for network in networks(False, BATCH_SIZES):
        row = {"network": network.name, "batch_size": network.batch_size, "contender": "torch.compile"}
        start = time.perf_counter()
        result = torch_epochs(network, bench.initial_weights(network), train, test, 1 + repeats, compile_model=True)
        rows.append(_summarise({**row, "status": "ok", "seconds_with_compilation": time.perf_counter() - start,
                                **result}, len(train[0])))
        Path(path).write_text(json.dumps(rows))  # what finished, should the budget stop the rest
    return 0


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------


PARTS = {"mnist": part_mnist, "gemm": part_gemm, "cuda-tests": part_cuda_tests, "cpu-scaling": part_cpu_scaling,
         "torch-compile": part_torch_compile}


def _fmt(value, spec=".3g", suffix="") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:{spec}}{suffix}"


def summary_rows(result: dict) -> list[tuple[str, str, str]]:
    """(what, measured, target) per target of the issue."""
    parts, rows = result["parts"], []
    for row in parts.get("mnist", {}).get("results", []):
        if row.get("contender") == "nnkern cuda (persistent)":
            rows.append((f"MNIST epoch, {row['network']}, batch {row['batch_size']}: cuda vs torch eager",
                         _fmt(row.get("speedup_vs_torch_eager"), ".2f", "x") if row.get("status") == "ok"
                         else row.get("status", "n/a"), "> 1x"))
    for row in parts.get("gemm", {}).get("results", []):
        target = "4096" in row["shape"]
        rows.append((f"GEMM {row['shape']}: cuda / cuBLAS throughput", _fmt(row.get("of_cublas"), ".2f", "x")
                     if "of_cublas" in row else row.get("cublas", {}).get("status", row.get("status", "n/a")),
                     ">= 0.5x" if target else ">= 1x"))
    tests = parts.get("cuda-tests", {})
    rows.append(("pytest tests/cuda on the device", f"{tests.get('status', 'n/a')} ({tests.get('summary', '')})",
                 "passed"))
    return rows


def markdown(result: dict) -> str:
    gpu = result["machine"].get("gpu", {})
    host = result["machine"]["host"]
    lines = [f"# nnkern device check{' (DRY RUN: simulator, tiny sizes, timings meaningless)' if result['dry_run'] else ''}",
             "", f"{result['created']}; GPU: {gpu.get('name')} ({gpu.get('nvidia_smi', '')}); CPU: {host['cpu']}, "
             f"{host['cores']} cores; {', '.join(f'{k} {v}' for k, v in result['machine']['versions'].items())}; "
             f"{result['seconds']:.0f} s", "",
             "| what | measured | target |", "| :--- | ---: | :--- |"]
    lines += [f"| {what} | {measured} | {target} |" for what, measured, target in summary_rows(result)]
    parts = result["parts"]
    mnist = parts.get("mnist", {})
    if mnist.get("results"):
        lines += ["", f"## MNIST epoch ({mnist['samples_per_epoch']} samples, SGD lr 0.1, float32)", "",
                  "| network | batch | contender | epoch s (median) | samples/s | vs torch eager | first-epoch loss | test acc |",
                  "| :--- | ---: | :--- | ---: | ---: | ---: | ---: | ---: |"]
        for r in mnist["results"] + parts.get("torch-compile", {}).get("results", []):
            if r.get("status") != "ok":
                lines.append(f"| {r['network']} | {r['batch_size']} | {r.get('contender', '')} | {r['status']} | | | | |")
                continue
            lines.append(f"| {r['network']} | {r['batch_size']} | {r['contender']} | {_fmt(r['median_epoch_s'], '.4f')} "
                         f"| {_fmt(r['samples_per_s'], ',.0f')} | {_fmt(r.get('speedup_vs_torch_eager'), '.2f', 'x')} "
                         f"| {_fmt(r['epoch_losses'][0], '.4f')} | {_fmt(r['test_accuracy'], '.4f')} |")
    gemm = parts.get("gemm", {})
    if gemm.get("results"):
        lines += ["", f"## GEMM, float32 ({gemm['method']})", "",
                  "| shape | cuda ms | cuda TFLOP/s | cuBLAS ms | cuBLAS TFLOP/s | cuda / cuBLAS | rel. error |",
                  "| :--- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in gemm["results"]:
            ours, theirs = r.get("nnkern_cuda", {}), r.get("cublas", {})
            lines.append(f"| {r['shape']} | {_fmt(ours.get('s_per_product', math.nan) * 1e3, '.4f')} "
                         f"| {_fmt(ours.get('tflops'), '.2f')} | {_fmt(theirs.get('s_per_product', math.nan) * 1e3, '.4f')} "
                         f"| {_fmt(theirs.get('tflops'), '.2f')} | {_fmt(r.get('of_cublas'), '.2f', 'x')} "
                         f"| {_fmt(r.get('relative_error'), '.1e')} |")
    cpu = parts.get("cpu-scaling", {})
    if cpu.get("results"):
        lines += ["", f"## CPU thread scaling (`nnkern bench --quick`, {cpu['cores']} cores), samples/s", "",
                  "| network | contender | " + " | ".join(f"{r['threads']} thr" for r in cpu["runs"] if r["status"] == "ok")
                  + " |", "| :--- | :--- |" + " ---: |" * sum(r["status"] == "ok" for r in cpu["runs"])]
        keys = list(dict.fromkeys((r["network"], r["contender"]) for r in cpu["results"]))
        for network, contender in keys:
            cells = []
            for run in (r for r in cpu["runs"] if r["status"] == "ok"):
                hit = next((r for r in cpu["results"] if r["threads"] == run["threads"] and r["network"] == network
                            and r["contender"] == contender), None)
                cells.append(f"{hit['samples_per_s']:,.0f} ({hit['vs_1_thread']:.2f}x)" if hit and hit["vs_1_thread"]
                             else _fmt(hit and hit["samples_per_s"], ",.0f"))
            lines.append(f"| {network} | {contender} | " + " | ".join(cells) + " |")
    lines += ["", "## Parts", "", "| part | status | seconds |", "| :--- | :--- | ---: |"]
    for name, part in parts.items():
        lines.append(f"| {name} | {part.get('status')} | {_fmt(part.get('seconds'), '.0f')} |")
    return "\n".join(lines) + "\n"


@dataclasses.dataclass
class Context:
    dry_run: bool
    out: Path
    repeats: int
    torch: object


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="Numba's CUDA simulator, tiny sizes (no GPU needed)")
    parser.add_argument("--out", default="device_check", help="folder for device_check.json and .md")
    parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds for all parts together")
    parser.add_argument("--repeats", type=int, default=3, help="timed MNIST epochs per contender")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"which of {','.join(PARTS)}")
    parser.add_argument("--no-install", action="store_true", help=argparse.SUPPRESS)  # device_check.sh's option
    parser.add_argument("--torch-compile-worker", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_compile_worker:
        return torch_compile_worker(args.torch_compile_worker, args.repeats)
    if args.dry_run:
        os.environ["NUMBA_ENABLE_CUDASIM"] = "1"  # before Numba is imported
    if not os.environ.get("NNKERN_DATA") and (REPO / "data" / "mnist").is_dir():
        os.environ["NNKERN_DATA"] = str(REPO / "data" / "mnist")
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(wanted) - set(PARTS))
    if unknown:
        parser.error(f"unknown parts {unknown}; choose from {', '.join(PARTS)}")

    started = time.monotonic()
    budget = Budget(args.budget)
    import nnkern
    from nnkern import bench

    if "cuda" not in nnkern.available_backends():
        print(f"device_check: the cuda backend is unavailable here ({nnkern.unavailable_reason('cuda')}); "
              "on a machine without a GPU use --dry-run", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = Context(args.dry_run, out, args.repeats, bench.import_torch())
    result = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "dry_run": args.dry_run, "budget_s": args.budget, "command": [sys.executable, *sys.argv],
              "machine": machine(ctx.torch, args.dry_run), "targets": TARGETS, "parts": {}}
    for name, run_part in PARTS.items():
        if name not in wanted:
            result["parts"][name] = {"status": "not requested"}
            continue
        log(f"{name}: {budget.left():.0f} s of the budget left")
        start = time.perf_counter()
        try:
            part = run_part(ctx, budget)
        except Exception as exc:
            part = {"status": f"error: {type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
        part.setdefault("seconds", time.perf_counter() - start)
        result["parts"][name] = part
        result["seconds"] = time.monotonic() - started
        (out / "device_check.json").write_text(json.dumps(result, indent=2, default=str))
    result["seconds"] = time.monotonic() - started
    (out / "device_check.json").write_text(json.dumps(result, indent=2, default=str))
    report = markdown(result)
    (out / "device_check.md").write_text(report)
    print(report)
    log(f"wrote {out / 'device_check.json'} and {out / 'device_check.md'} in {result['seconds']:.0f} s "
        f"({platform.node()})")
    bad = [name for name, part in result["parts"].items()
           if str(part.get("status")).startswith(("error", "failed", "timed out"))]
    if bad:
        log(f"parts that failed: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
