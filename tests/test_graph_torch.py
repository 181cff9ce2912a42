"""Graph models against PyTorch (float64, the same weights), written by hand in torch as
the oracle: a residual MLP, a two-input network merged by concatenation, and a two-head
network with weighted losses. Outputs, losses, every parameter gradient and the input
gradients agree to round-off, and so do losses and weights over training steps, on the
reference and on every fast CPU backend.

torch is an optional extra (in .[test]): without it this module is skipped.
"""

from __future__ import annotations

import numpy as np
import pytest

from nnkern import nn, optim

torch = pytest.importorskip("torch")
F = torch.nn.functional

BATCH, STEPS = 8, 6
RTOL = 1e-10


@pytest.fixture(autouse=True, scope="module")
def torch_on_one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def torch_linear(layer: nn.Linear):
    """torch.nn.Linear with the weights of ``layer`` (torch stores W transposed)."""
    linear = torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(np.array(layer.W).T))
        linear.bias.copy_(torch.from_numpy(np.array(layer.b)))
    return linear


# -- the networks, in nnkern and by hand in torch ---------------------------------------------


def residual(backend):
    x = nn.Input(10, name="x")
    h = nn.ReLU()(nn.Linear(10, 12, seed=0)(x, name="first"))
    r = nn.ReLU()(nn.Linear(12, 12, seed=1)(h, name="block1"))
    r = nn.GELU()(nn.Linear(12, 12, seed=2)(r, name="block2"))
    s = nn.Add()(h, r)
    return nn.Graph(x, nn.Linear(12, 4, seed=3)(s, name="logits"), backend=backend, dtype=np.float64)


class TorchResidual(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        layers = {node.name: node.layer for node in model.nodes}
        self.first, self.block1, self.block2, self.logits = (
            torch_linear(layers[name]) for name in ("first", "block1", "block2", "logits"))

    def forward(self, x):
        h = F.relu(self.first(x))
        r = F.gelu(self.block2(F.relu(self.block1(h))))
        return self.logits(h + r)


def two_inputs(backend):
    a, b = nn.Input(7, name="a"), nn.Input(4, name="b")
    ha = nn.Tanh()(nn.Linear(7, 6, seed=4)(a, name="la"))
    hb = nn.LeakyReLU(0.2)(nn.Linear(4, 5, seed=5)(b, name="lb"))
    joined = nn.Concatenate()(ha, hb, b)
    h = nn.Sigmoid()(nn.Linear(15, 6, seed=6)(joined, name="mix"))
    return nn.Graph([a, b], nn.Linear(6, 4, seed=7)(nn.Add()(h, ha), name="logits"), backend=backend,
                    dtype=np.float64)


class TorchTwoInputs(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        layers = {node.name: node.layer for node in model.nodes}
        self.la, self.lb, self.mix, self.logits = (torch_linear(layers[name]) for name in ("la", "lb", "mix", "logits"))

    def forward(self, a, b):
        ha = torch.tanh(self.la(a))
        hb = F.leaky_relu(self.lb(b), 0.2)
        h = torch.sigmoid(self.mix(torch.cat([ha, hb, b], dim=1)))
        return self.logits(h + ha)


def two_heads(backend):
    x = nn.Input(10, name="x")
    h = nn.ReLU()(nn.Linear(10, 9, seed=8)(x, name="trunk"))
    classes = nn.Linear(9, 4, seed=9)(h, name="classes")
    values = nn.Linear(9, 2, seed=10)(nn.Tanh()(h), name="values")
    return nn.Graph(x, [classes, values], backend=backend, dtype=np.float64)


class TorchTwoHeads(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        layers = {node.name: node.layer for node in model.nodes}
        self.trunk, self.classes, self.values = (torch_linear(layers[name]) for name in ("trunk", "classes", "values"))

    def forward(self, x):
        h = F.relu(self.trunk(x))
        return self.classes(h), self.values(torch.tanh(h))


WEIGHTS = (1.0, 0.3)


def batch(seed):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((BATCH, 10)), "a": rng.standard_normal((BATCH, 7)),
            "b": rng.standard_normal((BATCH, 4)), "labels": rng.integers(0, 4, BATCH),
            "values": rng.standard_normal((BATCH, 2))}


# name: (nnkern model, torch model, input names, nnkern targets and loss, torch loss of outputs)
NETWORKS = {
    "residual": (residual, TorchResidual, ["x"], lambda d: (d["labels"], "cross_entropy", None),
                 lambda out, d: F.cross_entropy(out, torch.from_numpy(d["labels"]))),
    "two_inputs": (two_inputs, TorchTwoInputs, ["a", "b"], lambda d: (d["labels"], "cross_entropy", None),
                   lambda out, d: F.cross_entropy(out, torch.from_numpy(d["labels"]))),
    "two_heads": (two_heads, TorchTwoHeads, ["x"],
                  lambda d: ([d["labels"], d["values"]], ["cross_entropy", "mse"], list(WEIGHTS)),
                  lambda out, d: WEIGHTS[0] * F.cross_entropy(out[0], torch.from_numpy(d["labels"]))
                  + WEIGHTS[1] * F.mse_loss(out[1], torch.from_numpy(d["values"]))),
}


@pytest.mark.parametrize("network", list(NETWORKS))
def test_outputs_loss_and_every_gradient_match_torch(any_backend, network):
    make, make_torch, input_names, targets_of, torch_loss = NETWORKS[network]
    model = make(any_backend)
    reference = make_torch(model)
    d = batch(0)
    targets, loss, weights = targets_of(d)
    objective = model._objective(loss, weights)
    outputs = model._forward([d[name] for name in input_names], training=True)
    value = objective.forward(outputs, targets if isinstance(targets, list) else [targets], any_backend)
    grads = objective.backward()
    input_grads = model.backward(grads if len(grads) > 1 else grads[0], input_grad=True)
    input_grads = input_grads if isinstance(input_grads, list) else [input_grads]

    torch_inputs = [torch.from_numpy(d[name]).requires_grad_() for name in input_names]
    torch_outputs = reference(*torch_inputs)
    torch_value = torch_loss(torch_outputs, d)
    torch_value.backward()

    torch_outputs = torch_outputs if isinstance(torch_outputs, tuple) else (torch_outputs,)
    for ours, theirs in zip(outputs, torch_outputs):
        np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=RTOL, atol=1e-13)
    assert value == pytest.approx(torch_value.item(), rel=RTOL)
    for (name, _), grad in zip(model.named_parameters(), model.gradients()):
        node, kind = name.split(".")
        torch_layer = getattr(reference, node)
        want = torch_layer.weight.grad.numpy().T if kind == "W" else torch_layer.bias.grad.numpy()
        np.testing.assert_allclose(grad, want, rtol=1e-9, atol=1e-13, err_msg=name)
    for name, ours, theirs in zip(input_names, input_grads, torch_inputs):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-9, atol=1e-13, err_msg=f"input {name}")


OPTIMIZERS = {
    "sgd_momentum_weight_decay": (lambda: optim.SGD(0.05, momentum=0.9, weight_decay=0.01),
                                  lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=0.01)),
    "adam": (lambda: optim.Adam(0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("network", list(NETWORKS))
def test_training_steps_match_torch(any_backend, network, optimizer):
    make, make_torch, input_names, targets_of, torch_loss = NETWORKS[network]
    make_ours, make_theirs = OPTIMIZERS[optimizer]
    model = make(any_backend)
    reference = make_torch(model)
    ours = make_ours()
    ours.bind(model.parameters(), model.gradients(), backend=any_backend)
    theirs = make_theirs(reference.parameters())
    _, loss, weights = targets_of(batch(0))
    objective = model._objective(loss, weights)
    our_losses, their_losses = [], []
    for step in range(STEPS):
        d = batch(step)
        targets, _, _ = targets_of(d)
        our_losses.append(model.train_step({name: d[name] for name in input_names}, targets, ours, objective)[0])
        theirs.zero_grad()
        value = torch_loss(reference(*(torch.from_numpy(d[name]) for name in input_names)), d)
        value.backward()
        theirs.step()
        their_losses.append(value.item())
    np.testing.assert_allclose(our_losses, their_losses, rtol=RTOL)
    assert their_losses[-1] != their_losses[0]
    for name, p in model.named_parameters():
        node, kind = name.split(".")
        torch_layer = getattr(reference, node)
        want = torch_layer.weight.detach().numpy().T if kind == "W" else torch_layer.bias.detach().numpy()
        np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-12, err_msg=name)
