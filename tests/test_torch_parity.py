"""nnkern against PyTorch: the same network with the same initial weights trained on the
same batches, in float64, must give the same loss at every step (to ~1e-10 relative) and
the same final weights, for every optimizer, on the reference and every fast CPU backend.

torch is an optional extra: without it this module is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import nn, optim

torch = pytest.importorskip("torch")

BATCH, STEPS, IN, CLASSES = 16, 12, 20, 5
LOSS_RTOL = 1e-10
WEIGHT_RTOL = 1e-9


@pytest.fixture(autouse=True, scope="module")
def torch_on_one_thread():
    """These matrices are tiny: torch's thread pool only adds contention (10x slower on a
    busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def nnkern_network(backend):
    """Every activation kind: ReLU and Sigmoid are fused into the Linear before them,
    GELU and LeakyReLU are not (GELU's gradient needs its input)."""
    return nn.Sequential(
        nn.Linear(IN, 16, seed=1), nn.ReLU(),
        nn.Linear(16, 14, seed=2), nn.GELU(),
        nn.Linear(14, 12, seed=3), nn.LeakyReLU(0.2),
        nn.Linear(12, 10, seed=4), nn.Sigmoid(),
        nn.Linear(10, CLASSES, seed=5),
        backend=backend, dtype=np.float64,
    )


def torch_copy(model: nn.Sequential, *tail):
    """The same network in torch, with the same weights (torch stores W transposed)."""
    activations = {nn.ReLU: lambda l: torch.nn.ReLU(), nn.GELU: lambda l: torch.nn.GELU(),
                   nn.LeakyReLU: lambda l: torch.nn.LeakyReLU(l.negative_slope),
                   nn.Sigmoid: lambda l: torch.nn.Sigmoid()}
    layers = []
    for layer in model.layers:
        if isinstance(layer, nn.Linear):
            linear = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.array(layer.W).T))
                linear.bias.copy_(torch.from_numpy(np.array(layer.b)))
            layers.append(linear)
        else:
            layers.append(activations[type(layer)](layer))
    return torch.nn.Sequential(*layers, *tail)


def batches(targets: str):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((STEPS * BATCH, IN))
    labels = rng.integers(0, CLASSES, STEPS * BATCH)
    y = {"labels": labels, "one_hot": np.eye(CLASSES)[labels],
         "regression": rng.standard_normal((STEPS * BATCH, CLASSES)),
         "binary": (rng.random((STEPS * BATCH, CLASSES)) > 0.5).astype(np.float64)}[targets]
    return [(x[i:i + BATCH], y[i:i + BATCH]) for i in range(0, STEPS * BATCH, BATCH)]


OPTIMIZERS = {
    "sgd": (lambda: optim.SGD(0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    "sgd_momentum": (lambda: optim.SGD(0.05, momentum=0.9),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    "sgd_momentum_weight_decay": (lambda: optim.SGD(0.05, momentum=0.9, weight_decay=0.01),
                                  lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov": (lambda: optim.SGD(0.05, momentum=0.9, nesterov=True),
                     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True)),
    "sgd_nesterov_weight_decay": (
        lambda: optim.SGD(0.05, momentum=0.8, weight_decay=0.01, nesterov=True),
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.8, weight_decay=0.01, nesterov=True)),
    "adagrad": (lambda: optim.Adagrad(0.05), lambda p: torch.optim.Adagrad(p, lr=0.05)),
    "rmsprop": (lambda: optim.RMSprop(0.01), lambda p: torch.optim.RMSprop(p, lr=0.01)),
    "rmsprop_weight_decay": (lambda: optim.RMSprop(0.01, weight_decay=0.1),
                             lambda p: torch.optim.RMSprop(p, lr=0.01, weight_decay=0.1)),
    "adadelta": (lambda: optim.Adadelta(), lambda p: torch.optim.Adadelta(p)),
    "adam": (lambda: optim.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    "adam_weight_decay": (lambda: optim.Adam(0.01, betas=(0.8, 0.99), weight_decay=0.05),
                          lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.8, 0.99), weight_decay=0.05)),
    "adamw_defaults": (lambda: optim.AdamW(), lambda p: torch.optim.AdamW(p)),
    "adamw": (lambda: optim.AdamW(0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.5),
              lambda p: torch.optim.AdamW(p, lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.5)),
}

LOSSES = {
    # name: (nnkern loss, torch loss, torch layers after the network, nnkern layers likewise, targets)
    "cross_entropy": (nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss, [], [], "labels"),
    "cross_entropy_one_hot": (nn.CrossEntropyLoss, torch.nn.CrossEntropyLoss, [], [], "one_hot"),
    "mse": (nn.MSELoss, torch.nn.MSELoss, [], [], "regression"),
    "bce": (nn.BCELoss, torch.nn.BCELoss, [torch.nn.Sigmoid()], [nn.Sigmoid()], "binary"),
}


def train_both(backend, optimizer: str, loss: str):
    make_ours, make_theirs = OPTIMIZERS[optimizer]
    our_loss, their_loss, torch_tail, our_tail, targets = LOSSES[loss]
    model = nnkern_network(backend)
    if our_tail:
        model = nn.Sequential(*model.layers, *our_tail, backend=backend, dtype=np.float64)
    reference = torch_copy(nnkern_network(backend), *torch_tail)
    ours, theirs = make_ours(), make_theirs(reference.parameters())
    ours.bind(model.parameters(), model.gradients(), backend=backend)
    our_criterion, their_criterion = our_loss(), their_loss()
    our_losses, their_losses = [], []
    for xb, yb in batches(targets):
        our_losses.append(model.train_step(xb, yb, ours, our_criterion)[0])
        theirs.zero_grad()
        target = torch.from_numpy(yb)
        value = their_criterion(reference(torch.from_numpy(xb)), target)
        value.backward()
        theirs.step()
        their_losses.append(value.item())
    return model, reference, np.array(our_losses), np.array(their_losses)


def assert_same_weights(model, reference):
    linears = [m for m in reference if isinstance(m, torch.nn.Linear)]
    for layer, linear in zip([l for l in model.layers if isinstance(l, nn.Linear)], linears):
        np.testing.assert_allclose(layer.W, linear.weight.detach().numpy().T, rtol=WEIGHT_RTOL, atol=1e-12)
        np.testing.assert_allclose(layer.b, linear.bias.detach().numpy(), rtol=WEIGHT_RTOL, atol=1e-12)


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_every_optimizer_matches_torch_step_by_step(any_backend, optimizer):
    model, reference, ours, theirs = train_both(any_backend, optimizer, "cross_entropy")
    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL)
    assert theirs[-1] != theirs[0]  # training moved
    assert_same_weights(model, reference)


@pytest.mark.parametrize("loss", ["cross_entropy_one_hot", "mse", "bce"])
def test_every_loss_matches_torch_step_by_step(any_backend, loss):
    model, reference, ours, theirs = train_both(any_backend, "adam", loss)
    np.testing.assert_allclose(ours, theirs, rtol=LOSS_RTOL)
    assert_same_weights(model, reference)


def _warmup_cosine(optimizer):
    """torch's per-step warm-up then cosine decay (24 steps: 2 epochs of 12 batches)."""
    lr_scheduler = torch.optim.lr_scheduler
    return lr_scheduler.SequentialLR(optimizer, [lr_scheduler.LinearLR(optimizer, 0.1, total_iters=5),
                                                 lr_scheduler.CosineAnnealingLR(optimizer, 19)], [5])


# name: (our optimizer, torch's, torch's per-step scheduler or None)
FIT_OPTIMIZERS = {
    "sgd_momentum": (lambda: optim.SGD(0.1, momentum=0.5), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5),
                     None),
    "sgd_nesterov_weight_decay": (*OPTIMIZERS["sgd_nesterov_weight_decay"], None),
    "adamw": (*OPTIMIZERS["adamw"], None),
    "adamw_warmup_cosine": (
        lambda: optim.AdamW(0.02, weight_decay=0.1, schedule=optim.SequentialLR(
            [optim.LinearLR(0.1, total_iters=5), optim.CosineAnnealingLR(19)], [5], interval="step")),
        lambda p: torch.optim.AdamW(p, lr=0.02, weight_decay=0.1), _warmup_cosine),
}


@pytest.mark.parametrize("optimizer", list(FIT_OPTIMIZERS))
def test_fit_epoch_losses_match_torch(any_backend, optimizer, monkeypatch):
    """fit (no shuffling) reports per epoch the mean of the batch losses torch sees; on the
    "cython" and "numba" backends every step is the fused engine's (this network is a
    plain MLP it takes), so its update rules, and its reading of a scheduled learning
    rate at every step, are checked against torch's too."""
    make_ours, make_theirs, make_scheduler = FIT_OPTIMIZERS[optimizer]
    model = nnkern_network(any_backend)
    reference = torch_copy(nnkern_network(any_backend))
    data = batches("labels")
    x, y = np.concatenate([b[0] for b in data]), np.concatenate([b[1] for b in data])
    if any_backend != "numpy":
        monkeypatch.setattr(model, "train_step", lambda *args: pytest.fail("fit left the fused engine"))
    history = model.fit(x, y, epochs=2, batch_size=BATCH, optimizer=make_ours(), shuffle=False, verbose=False)
    theirs = make_theirs(reference.parameters())
    scheduler = make_scheduler(theirs) if make_scheduler else None
    epoch_means = []
    for _ in range(2):
        losses = []
        for xb, yb in data:
            theirs.zero_grad()
            value = torch.nn.functional.cross_entropy(reference(torch.from_numpy(xb)), torch.from_numpy(yb))
            value.backward()
            theirs.step()
            if scheduler is not None:
                scheduler.step()
            losses.append(value.item())
        epoch_means.append(np.mean(losses))
    np.testing.assert_allclose(history.history["loss"], epoch_means, rtol=LOSS_RTOL)
    assert_same_weights(model, reference)
