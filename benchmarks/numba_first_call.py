"""What the "numba" backend's lazy compilation costs: ``import nnkern``, then the first call
of every kernel (float32) and one fused training step, in a fresh process with an empty
on-disk cache (cold), then in a second fresh process that finds the cache filled (warm).

    python benchmarks/numba_first_call.py [--json PATH]

Each process gets its own NUMBA_CACHE_DIR (a new temporary directory shared by the cold and
the warm run), so no earlier cache is reused. Times are wall-clock seconds of one run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r'''
import json, time
start = time.perf_counter()
import nnkern
timings = {"import nnkern": time.perf_counter() - start}
import numpy as np
from nnkern import nn, ops, optim

rng = np.random.default_rng(0)
f = np.float32
x, w, b = rng.random((8, 5), f), rng.random((5, 3), f), rng.random(3, f)
y = rng.random((8, 3), f)
labels = np.arange(8) % 3
p, g = rng.random(7, f), rng.random(7, f)
s0, s1 = np.zeros(7, f), np.zeros(7, f)
calls = {
    "matmul": lambda: ops.matmul(x, w, backend="numba"),
    "linear": lambda: ops.linear(x, w, b, activation="relu", backend="numba"),
    "activation": lambda: ops.activation("sigmoid", y, backend="numba"),
    "activation_grad": lambda: ops.activation_grad("sigmoid", None, y, y, backend="numba"),
    "softmax": lambda: ops.softmax(y, backend="numba"),
    "softmax_cross_entropy": lambda: ops.softmax_cross_entropy(y, labels, backend="numba"),
    "mse": lambda: ops.mse(y, y, backend="numba"),
    "binary_cross_entropy": lambda: ops.binary_cross_entropy(np.clip(y, 0.1, 0.9), y, backend="numba"),
    "bias_grad": lambda: ops.bias_grad(y, backend="numba"),
    "sgd_update": lambda: ops.sgd_update(p, g, 0.1, backend="numba"),
    "momentum_update": lambda: ops.momentum_update(p, g, s0, 0.1, 0.9, backend="numba"),
    "adagrad_update": lambda: ops.adagrad_update(p, g, s0, 0.1, backend="numba"),
    "rmsprop_update": lambda: ops.rmsprop_update(p, g, s0, 0.1, backend="numba"),
    "adadelta_update": lambda: ops.adadelta_update(p, g, s0, s1, backend="numba"),
    "adam_update": lambda: ops.adam_update(p, g, s0, s1, 1, backend="numba"),
}
for name, call in calls.items():
    start = time.perf_counter()
    call()
    timings[name] = time.perf_counter() - start
model = nn.Sequential(nn.Linear(5, 4, seed=0), nn.ReLU(), nn.Linear(4, 3, seed=1), backend="numba", dtype=f)
start = time.perf_counter()
model.fit(x, labels, epochs=1, batch_size=8, optimizer=optim.SGD(lr=0.1), verbose=False)
timings["fused training step (fit, 1 step)"] = time.perf_counter() - start
start = time.perf_counter()
model.fit(x, labels, epochs=1, batch_size=8, optimizer=optim.SGD(lr=0.1), verbose=False)
timings["the same fit again (compiled)"] = time.perf_counter() - start
print(json.dumps(timings))
'''


def run_child(cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", metavar="PATH", help="write both runs' timings there")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nnkern-numba-cache-") as cache_dir:
        cold = run_child(cache_dir)
        warm = run_child(cache_dir)
    width = max(map(len, cold))
    print(f"{'first call':<{width}}  {'cold cache':>10}  {'warm cache':>10}")
    for name in cold:
        print(f"{name:<{width}}  {cold[name]:>9.3f}s  {warm[name]:>9.3f}s")
    total_cold, total_warm = sum(cold.values()), sum(warm.values())
    print(f"{'total':<{width}}  {total_cold:>9.3f}s  {total_warm:>9.3f}s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cold": cold, "warm": warm}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
