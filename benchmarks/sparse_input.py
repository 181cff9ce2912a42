"""Where the fused Cython step's sparse-input first layer pays (nnkern.engine's
SPARSE_INPUT_MAX_DENSITY): the step time with the first layer over the input's nonzeros
against the dense products, on MNIST and on inputs of chosen densities (MNIST's rows with
pixels zeroed at random, or filled in, to reach the density).

    python benchmarks/sparse_input.py [--threads N] [--repeats R] [--json PATH]

Per network and density: the median over R interleaved repeats of the mean step time over
300 steps, for NNKERN_SPARSE_INPUT=1 and =0 (set per step function; the engine reads it
when the step is built), float32, SGD.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

import nnkern
from nnkern import nn, optim
from nnkern.data import load_mnist
from nnkern.engine import SPARSE_INPUT_MAX_DENSITY, fused_train_step

NETWORKS = {"784-100-10 sigmoid": ((784, 100, 10), nn.Sigmoid, 100),
            "784-256-128-64-20-10 relu": ((784, 256, 128, 64, 20, 10), nn.ReLU, 64)}
STEPS = 300


def with_density(x, density, rng):
    """x with entries zeroed (or zeros filled with values in (0, 1)) at random until about
    `density` of them are nonzero; None: x as it is."""
    if density is None:
        return x
    x = x.copy()
    current = np.count_nonzero(x) / x.size
    if density < current:
        keep = rng.random(x.shape) < density / current
        x *= keep
    else:
        fill = (x == 0) & (rng.random(x.shape) < (density - current) / (1 - current))
        x[fill] = rng.random(np.count_nonzero(fill)).astype(x.dtype)
    return x


def build_step(widths, act, batch, x, y, sparse):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b, seed=i)] + ([act()] if i < len(widths) - 2 else [])
    model = nn.Sequential(*layers, backend="cython", dtype=np.float32)
    os.environ["NNKERN_SPARSE_INPUT"] = "1" if sparse else "0"
    try:
        step = fused_train_step(model, optim.SGD(model, lr=0.05), nn.CrossEntropyLoss(), x, y, batch)
    finally:
        del os.environ["NNKERN_SPARSE_INPUT"]
    assert step.sparse_input == sparse
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=nnkern.get_num_threads())
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", help="write the results there")
    args = parser.parse_args()
    nnkern.set_num_threads(args.threads)
    os.environ["NNKERN_PLAN"] = str(args.threads)  # that many threads, whatever the step's plan would choose
    (x_all, y_all), _ = load_mnist(dtype=np.float32)
    rng = np.random.default_rng(0)
    results = []
    print(f"threads {args.threads}; SPARSE_INPUT_MAX_DENSITY = {SPARSE_INPUT_MAX_DENSITY}")
    print(f"{'network':<28} {'density':>8} {'dense us':>9} {'sparse us':>10} {'dense/sparse':>13}")
    for name, (widths, act, batch) in NETWORKS.items():
        for density in (None, 0.1, 0.3, 0.4, 0.5, 0.7):
            x = with_density(x_all[: STEPS * batch], density, rng)
            y = y_all[: STEPS * batch]
            batches = [(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)]
            steps = {sparse: build_step(widths, act, batch, x, y, sparse) for sparse in (False, True)}
            times = {sparse: [] for sparse in steps}
            for step in steps.values():
                for xb, yb in batches[:10]:
                    step(xb, yb)
            for _ in range(args.repeats):
                for sparse, step in steps.items():
                    start = time.perf_counter()
                    for xb, yb in batches:
                        step(xb, yb)
                    times[sparse].append((time.perf_counter() - start) / len(batches))
            dense, sparse = (statistics.median(times[s]) * 1e6 for s in (False, True))
            measured = np.count_nonzero(x) / x.size
            label = f"{measured:.2f}" + (" (MNIST)" if density is None else "")
            print(f"{name:<28} {label:>8} {dense:9.0f} {sparse:10.0f} {dense / sparse:12.2f}x", flush=True)
            results.append({"network": name, "density": measured, "mnist": density is None,
                            "dense_step_us": dense, "sparse_step_us": sparse})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "repeats": args.repeats, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
