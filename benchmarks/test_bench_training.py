"""End to end: one MNIST training epoch per contender, for the two networks of the source
material (784-100-10 sigmoid, batch 100; 784-256-128-64-20-10 ReLU, batch 64), each on
pixels in [0, 1] (mostly zeros) and in [-1, 1] (dense), SGD lr 0.1, float32. Every contender starts from the same initial weights and sees the same batches in
the same order (see nnkern.bench).

Before timing, the contender's loss after a few steps must equal the NumPy reference's;
after timing, its test accuracy is recorded in the JSON (extra_info) and must be that of a
network that learned. ``$NNKERN_BENCH_EPOCH_ROUNDS`` sets the number of timed epochs
(default 3).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from bench_support import REFERENCE, assert_matches, contenders

from nnkern import bench
from nnkern.data import load_mnist

pytestmark = pytest.mark.training

ROUNDS = int(os.environ.get("NNKERN_BENCH_EPOCH_ROUNDS", 3))
VALIDATION_STEPS = 5
# One epoch of either network reaches well above this; a broken kernel stays near 0.1.
MIN_TEST_ACCURACY = 0.85


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


NETWORK_CASES = [
    pytest.param(network, marks=pytest.mark.benchmark(
        group=f"epoch {network.name}, batch {network.batch_size}, {network.inputs}"),
                 id=f"{network.name.split()[0]}-{network.normalize}")
    for network in bench.NETWORKS
]


@pytest.mark.parametrize("contender", contenders("torch"))
@pytest.mark.parametrize("network", NETWORK_CASES)
def test_epoch(benchmark, mnist, network, contender):
    (x_train, y_train), (x_test, y_test) = mnist
    x_train, x_test = network.data(x_train), network.data(x_test)
    weights = bench.initial_weights(network)
    batches = bench.epoch_batches(x_train, y_train, network.batch_size, len(x_train), seed=0)

    reference = bench.make_trainer(REFERENCE, network, weights)
    reference_inputs = reference.prepare(batches)  # a trainer builds its training step there
    trainer = bench.make_trainer(contender, network, weights)
    inputs = trainer.prepare(batches)
    for t in (reference, trainer):
        t.reset()
    expected_loss = reference.train(reference_inputs[:VALIDATION_STEPS])
    loss = trainer.train(inputs[:VALIDATION_STEPS])
    assert_matches(loss, expected_loss, f"{contender} loss after {VALIDATION_STEPS} steps", rtol=1e-3)

    benchmark.pedantic(trainer.train, args=(inputs,), setup=trainer.reset, rounds=ROUNDS, iterations=1)

    accuracy = trainer.accuracy(x_test, y_test)
    benchmark.extra_info["test_accuracy"] = accuracy
    if benchmark.stats is not None:  # None under --benchmark-disable
        median = benchmark.stats.stats.median
        samples = len(batches) * network.batch_size
        benchmark.extra_info.update(samples_per_epoch=samples, samples_per_s=samples / median,
                                    gflops=samples * network.flops_per_sample / median / 1e9)
    assert np.isfinite(accuracy) and accuracy >= MIN_TEST_ACCURACY, (
        f"{contender}: test accuracy {accuracy:.4f} after one epoch of {network.name}"
    )
