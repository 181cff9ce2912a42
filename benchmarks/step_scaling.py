"""How the fused training step scales with threads: its time on 1 and on N threads, each
measurement in a process of its own, rounds interleaved, for the networks of issue 16
(dense MNIST inputs, (x/255 - 0.5)/0.5, unless --normalize unit).

    python benchmarks/step_scaling.py [--threads 1,2] [--rounds 5] [--backends cython,numba]
                                      [--dtype float32] [--normalize symmetric] [--json PATH]

Per network, backend and thread count: the median over the rounds of the mean step time
over STEPS steps on the first batches of MNIST (the same batches every round, so they come
from the cache: the step alone, without reading a new batch from memory), the GFLOP/s of
useful work (nnkern.bench's count) and its share of the GEMM peak measured by the same
process (the better of NumPy's BLAS and nnkern's GEMM at 2048^3), and each thread count's
speed-up over the first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

NETWORKS = {  # name: (hidden widths, activation, batch size)
    "784-256-128-64-20-10 relu, batch 64": ((256, 128, 64, 20), "relu", 64),
    "784-256-128-64-20-10 relu, batch 32": ((256, 128, 64, 20), "relu", 32),
    "784-100-10 sigmoid, batch 100": ((100,), "sigmoid", 100),
    "784-800-10 relu, batch 128": ((800,), "relu", 128),
    "784-1024-1024-10 relu, batch 256": ((1024, 1024), "relu", 256),
}
STEPS, BATCHES, WARMUP = 100, 20, 20


def measure(name: str, backend: str, threads: int, dtype: str, normalize: str) -> dict:
    """One measurement in this process."""
    from nnkern import bench
    from nnkern.data import load_mnist

    hidden, activation, batch = NETWORKS[name]
    network = bench.custom_network(hidden, activation, batch, normalize, dtype)
    os.environ["NNKERN_PLAN"] = str(threads)  # that many threads, whatever the step's plan would choose
    bench.set_threads(threads, with_torch=False)  # the peak's BLAS too: on `threads` threads
    peak = bench.measure_sgemm_peak(2048, dtype=dtype)
    (x_unit, y), _ = load_mnist()
    batches = bench.epoch_batches(network.data(x_unit), y, batch, batch * BATCHES, seed=0)
    trainer = bench.NnkernTrainer(backend, network, bench.initial_weights(network))
    trainer.prepare(batches)
    if trainer.fused_step is None:
        raise RuntimeError(f"{backend} has no fused step for {name}")
    bench.wait_for_idle_pools()
    for i in range(WARMUP):
        trainer.step(*batches[i % BATCHES])
    start = time.perf_counter()
    for i in range(STEPS):
        trainer.step(*batches[i % BATCHES])
    step_s = (time.perf_counter() - start) / STEPS
    gflops = batch * network.flops_per_sample / step_s / 1e9
    return {"step_s": step_s, "gflops": gflops, "peak_gflops": peak["gflops"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--backends", default="cython,numba")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--normalize", default="symmetric", choices=["unit", "symmetric"])
    parser.add_argument("--networks", help="comma-separated prefixes of the network names (default: all)")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        name, backend, threads = args.worker
        print(json.dumps(measure(name, backend, int(threads), args.dtype, args.normalize)))
        return 0

    from nnkern import bench

    threads = [int(t) for t in args.threads.split(",")]
    backends = args.backends.split(",")
    names = [n for n in NETWORKS if not args.networks or any(n.startswith(p) for p in args.networks.split(","))]
    runs = {}
    for _ in range(args.rounds):  # rounds interleaved: a slow minute hurts every measurement alike
        for name in names:
            for backend in backends:
                for t in threads:
                    done = subprocess.run([sys.executable, __file__, "--dtype", args.dtype, "--normalize",
                                           args.normalize, "--worker", name, backend, str(t)],
                                          capture_output=True, text=True, check=True)
                    runs.setdefault((name, backend, t), []).append(json.loads(done.stdout.splitlines()[-1]))
    machine = bench.machine_info()
    print(f"{machine['cpu']}, {machine['cores']} cores; {args.dtype}, inputs {args.normalize}; median of "
          f"{args.rounds} rounds of {STEPS} steps, each in its own process; peak: the process's own 2048^3 GEMM peak")
    print(f"{'network':36} {'backend':7} {'threads':>7} {'step us':>8} {'GFLOP/s':>8} {'of peak':>8} {'speed-up':>9}")
    table = []
    for name in names:
        for backend in backends:
            base = None
            for t in threads:
                rows = runs[name, backend, t]
                step = statistics.median(r["step_s"] for r in rows)
                share = statistics.median(r["gflops"] / r["peak_gflops"] for r in rows)
                gflops = statistics.median(r["gflops"] for r in rows)
                base = base or step
                table.append({"network": name, "backend": backend, "threads": t, "step_s": step, "gflops": gflops,
                              "fraction_of_peak": share, "speedup": base / step, "runs": rows})
                print(f"{name:36} {backend:7} {t:>7} {step * 1e6:>8.1f} {gflops:>8.1f} {share:>8.1%} "
                      f"{base / step:>8.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "dtype": args.dtype, "normalize": args.normalize, "rows": table}, f,
                      indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
