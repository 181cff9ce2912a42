"""What the "numba" backend's lazy compilation costs a first fit: each workload in a fresh
process with an empty on-disk cache (cold), then in a second fresh process that finds the
cache filled (warm).

    python benchmarks/numba_first_call.py [--workloads kernels,sklearn,mnist] [--json PATH]

Workloads (float32 unless said):
  kernels   ``import nnkern``, the first call of every kernel, then a first ``fit`` of a
            5-4-3 ReLU network (the fused step), one line each;
  sklearn   ``nnkern.sklearn.MLPClassifier(backend="numba", max_iter=20).fit`` on
            scikit-learn's digits (float64, pixels / 16: the layer path, adam);
  mnist     one epoch of ``model.fit`` of 784-100-10 ReLU on 2000 MNIST rows (pixels / 255,
            batch 64, SGD momentum 0.9: the fused step with the sparse first layer).

Each workload gets its own NUMBA_CACHE_DIR (a new temporary directory shared by its cold
and warm runs), so no earlier cache is reused. Times are seconds of one run: wall clock,
and the process's CPU time (user + system), which a busy machine inflates less (the
compilation runs on one core).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

PRELUDE = r'''
import json, resource, time

def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

timings = {}

def timed(name, call):
    wall, used = time.perf_counter(), cpu()
    call()
    timings[name] = [time.perf_counter() - wall, cpu() - used]

timed("import nnkern", lambda: __import__("nnkern"))
import numpy as np
from nnkern import nn, ops, optim
'''

KERNELS = PRELUDE + r'''
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
    timed(name, call)
model = nn.Sequential(nn.Linear(5, 4, seed=0), nn.ReLU(), nn.Linear(4, 3, seed=1), backend="numba", dtype=f)
fit = lambda: model.fit(x, labels, epochs=1, batch_size=8, optimizer=optim.SGD(lr=0.1), verbose=False)
timed("fused training step (fit, 1 step)", fit)
timed("the same fit again (compiled)", fit)
print(json.dumps(timings))
'''

SKLEARN = PRELUDE + r'''
import warnings
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from nnkern.sklearn import MLPClassifier
X, y = load_digits(return_X_y=True)
warnings.simplefilter("ignore", ConvergenceWarning)
fit = lambda: MLPClassifier(backend="numba", max_iter=20, random_state=0).fit(X / 16, y)
timed("MLPClassifier(backend='numba').fit, digits", fit)
timed("the same fit again (compiled)", fit)
print(json.dumps(timings))
'''

MNIST = PRELUDE + r'''
from nnkern.data import load_mnist
(x, y), _ = load_mnist()
x, y = x[:2000], y[:2000]

def fit():
    model = nn.Sequential(nn.Linear(784, 100, seed=0), nn.ReLU(), nn.Linear(100, 10, seed=1), backend="numba",
                          dtype=np.float32)
    model.fit(x, y, epochs=1, batch_size=64, optimizer=optim.SGD(lr=0.1, momentum=0.9), verbose=False)

timed("fit 784-100-10, 1 epoch of 2000 MNIST rows", fit)
timed("the same fit again (compiled)", fit)
print(json.dumps(timings))
'''

WORKLOADS = {"kernels": KERNELS, "sklearn": SKLEARN, "mnist": MNIST}


def run_child(code: str, cache_dir: str) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated, of {', '.join(WORKLOADS)} (default: all)")
    parser.add_argument("--json", metavar="PATH", help="write every run's timings there")
    args = parser.parse_args(argv)
    names = args.workloads.split(",")
    unknown = sorted(set(names) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workloads {unknown}; choose from {', '.join(WORKLOADS)}")
    results = {}
    for workload in names:
        with tempfile.TemporaryDirectory(prefix="nnkern-numba-cache-") as cache_dir:
            cold = run_child(WORKLOADS[workload], cache_dir)
            warm = run_child(WORKLOADS[workload], cache_dir)
        results[workload] = {"cold": cold, "warm": warm}
        width = max(map(len, cold))
        print(f"{workload}: seconds of one run, wall / CPU")
        print(f"  {'first call':<{width}}  {'cold cache':>15}  {'warm cache':>15}")
        for name in cold:
            print(f"  {name:<{width}}  {cold[name][0]:>6.2f} / {cold[name][1]:>6.2f}  "
                  f"{warm[name][0]:>6.2f} / {warm[name][1]:>6.2f}")
        if workload == "kernels":
            total_cold = [sum(t[i] for t in cold.values()) for i in (0, 1)]
            total_warm = [sum(t[i] for t in warm.values()) for i in (0, 1)]
            print(f"  {'total':<{width}}  {total_cold[0]:>6.2f} / {total_cold[1]:>6.2f}  "
                  f"{total_warm[0]:>6.2f} / {total_warm[1]:>6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
