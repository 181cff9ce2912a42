"""nnkern.sklearn.MLPClassifier against scikit-learn's own MLPClassifier on MNIST: the same
784-256-128-64-20-10 ReLU network, the same solver (SGD, momentum 0.9, lr 0.05, no L2
penalty), the same batch (64) and the same float32 data, one training epoch each
(``partial_fit``), on each thread count; the contenders interleaved, repeat after repeat.

    python benchmarks/sklearn_mlp.py [--limit N] [--repeats R] [--threads 1,2] [--json PATH]

Contenders: scikit-learn's MLPClassifier (NumPy and its BLAS), nnkern's MLPClassifier on
the fastest CPU backend (its fused engine; on MNIST the first layer reads only the
input's nonzeros), and the same with NNKERN_SPARSE_INPUT=0 (dense products, as on dense
data). Before timing, each contender is validated: its test accuracy after the timed
epoch must exceed 80 %. Reported: the median samples/s over the repeats, and the
accuracy. The thread count is set for every pool (nnkern.set_num_threads: OpenMP, Numba
and the BLAS scikit-learn calls, through threadpoolctl).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
import warnings

import numpy as np

import nnkern
from nnkern.bench import machine_info
from nnkern.data import load_mnist

HIDDEN = (256, 128, 64, 20)
BATCH = 64
LR = 0.05
MIN_ACCURACY = 0.80


@contextlib.contextmanager
def sparse_input(setting: str | None):
    """NNKERN_SPARSE_INPUT for the block (the engine reads it when a model's step is built)."""
    before = os.environ.get("NNKERN_SPARSE_INPUT")
    if setting is not None:
        os.environ["NNKERN_SPARSE_INPUT"] = setting
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NNKERN_SPARSE_INPUT", None)
        else:
            os.environ["NNKERN_SPARSE_INPUT"] = before


def scikit_learn_mlp():
    from sklearn.neural_network import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=HIDDEN, solver="sgd", momentum=0.9, nesterovs_momentum=False,
                         learning_rate_init=LR, alpha=0.0, batch_size=BATCH, random_state=0)


def nnkern_mlp():
    from nnkern.sklearn import MLPClassifier

    return MLPClassifier(hidden_layer_sizes=HIDDEN, solver="sgd", momentum=0.9, learning_rate_init=LR, alpha=0.0,
                         batch_size=BATCH, random_state=0)


# name: (estimator factory, NNKERN_SPARSE_INPUT during its epoch)
CONTENDERS = {
    "scikit-learn MLPClassifier": (scikit_learn_mlp, None),
    "nnkern.sklearn MLPClassifier": (nnkern_mlp, None),
    "nnkern.sklearn MLPClassifier, dense first layer": (nnkern_mlp, "0"),
}


def one_epoch(make, setting, x, y, classes, x_test, y_test) -> tuple[float, float]:
    """(seconds of one partial_fit epoch over (x, y), test accuracy after it). A first
    partial_fit on 2 batches builds the network (and the fused step) outside the timing."""
    estimator = make()
    with sparse_input(setting), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.partial_fit(x[: 2 * BATCH], y[: 2 * BATCH], classes=classes)
        started = time.perf_counter()
        estimator.partial_fit(x, y)
        seconds = time.perf_counter() - started
    return seconds, float(np.mean(estimator.predict(x_test) == y_test))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit", type=int, default=60000, help="training images per epoch (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: 3)")
    parser.add_argument("--threads", default="1,2", help="thread counts (default: 1,2)")
    parser.add_argument("--json", metavar="PATH", help="write the results there")
    args = parser.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    if args.json:
        from nnkern._paths import check_writable

        check_writable(args.json, "--json")

    (x, y), (x_test, y_test) = load_mnist()
    x, y = x[: args.limit], y[: args.limit]
    classes = np.arange(10)
    import sklearn

    results = []
    for count in threads:
        nnkern.set_num_threads(count)
        samples = {name: [] for name in CONTENDERS}
        accuracy = {}
        for _ in range(args.repeats):
            for name, (make, setting) in CONTENDERS.items():
                seconds, accuracy[name] = one_epoch(make, setting, x, y, classes, x_test, y_test)
                if accuracy[name] < MIN_ACCURACY:
                    raise SystemExit(f"{name}: test accuracy {accuracy[name]:.2%} after the epoch; not timing it")
                samples[name].append(len(x) / seconds)
        for name in CONTENDERS:
            results.append({"contender": name, "threads": count, "samples_per_s": statistics.median(samples[name]),
                            "all_samples_per_s": samples[name], "test_accuracy": accuracy[name]})

    machine = machine_info()
    print(f"MNIST {len(x)} images, 784-{'-'.join(map(str, HIDDEN))}-10 relu, SGD momentum 0.9 lr {LR}, batch {BATCH},"
          f" float32; nnkern backend {nnkern.get_backend()}; scikit-learn {sklearn.__version__};"
          f" median of {args.repeats} interleaved epochs; {machine['cpu']}, {machine['cores']} usable core(s),"
          f" {' '.join(machine['simd'])}")
    print(f"{'contender':<50} {'threads':>7} {'samples/s':>10} {'vs sklearn':>10} {'test acc':>9}")
    for row in results:
        base = next(r for r in results if r["threads"] == row["threads"] and r["contender"].startswith("scikit"))
        print(f"{row['contender']:<50} {row['threads']:>7} {row['samples_per_s']:>10,.0f}"
              f" {row['samples_per_s'] / base['samples_per_s']:>9.2f}x {row['test_accuracy']:>8.2%}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "images": len(x), "repeats": args.repeats, "machine": machine,
                       "versions": {"nnkern": nnkern.__version__, "scikit-learn": sklearn.__version__,
                                    "numpy": np.__version__}}, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
