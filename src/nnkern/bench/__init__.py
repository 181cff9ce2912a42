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

The harness is a package of its own, loaded only by ``nnkern bench`` (and by code that imports
it): ``import nnkern`` and the library's modules never import it. Its modules:
``networks`` (the MNIST networks, initial weights, batches), ``machine`` (the backends worth
timing, PyTorch, CPU, versions, threads, GEMM peak), ``trainers`` (the contenders, the nnkern
one built by :mod:`nnkern._builders` as ``nnkern train``'s model is), ``harness`` (the
interleaved processes and :func:`run`), ``report`` (text and chart), ``profiling``
(per-kernel profiles) and ``command`` (:func:`run_cli`, the command line's glue). Its
settings are read where they are defined: ``command.QUICK``, ``command.PROFILE_STEPS``,
``machine.POOL_IDLE_PAUSE_S``.
"""

from __future__ import annotations

from .command import networks_of, run_cli
from .harness import SCHEMA, checked_optimizers, run
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
from .networks import (
    NETWORKS,
    NORMALIZATIONS,
    Network,
    custom_network,
    epoch_batches,
    initial_weights,
)
from .profiling import (
    format_profile,
    profile_fused_step,
    profile_model,
    profile_networks,
    profile_step,
)
from .report import format_header, format_report, format_table, plot
from .trainers import (
    OPTIMIZERS,
    NnkernTrainer,
    TorchTrainer,
    make_trainer,
    training_step_for,
)

__all__ = [
    "NETWORKS",
    "Network",
    "custom_network",
    "benchmark_backends",
    "machine_info",
    "versions",
    "measure_sgemm_peak",
    "initial_weights",
    "epoch_batches",
    "set_threads",
    "import_torch",
    "wait_for_idle_pools",
    "NnkernTrainer",
    "TorchTrainer",
    "make_trainer",
    "training_step_for",
    "run",
    "checked_optimizers",
    "format_header",
    "format_table",
    "format_report",
    "plot",
    "profile_step",
    "profile_model",
    "profile_fused_step",
    "profile_networks",
    "format_profile",
    "networks_of",
    "run_cli",
    "NORMALIZATIONS",
    "OPTIMIZERS",
    "REFERENCE",
    "TORCH",
    "SCHEMA",
]
