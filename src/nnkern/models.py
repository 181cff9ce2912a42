"""The models: :class:`Graph` (layers forming a directed acyclic graph: several inputs and
outputs, merges, residual connections) and :class:`Sequential` (the graph of a chain), with
their plan (the stages of the forward pass in topological order, a Linear fused with the
activation after it), forward and backward passes, parameters and state, evaluation and
prediction, and :func:`load`. Training runs in :mod:`nnkern.training`; the file format is
:mod:`nnkern.modelfile`'s.
"""

from __future__ import annotations


import numpy as np

from . import _arrays, _validate, modelfile, training
from ._backend import backend_module, get_backend
from ._graph import checked_nodes, dot_text, named_graph, summary_table, width_str
from ._workspace import Buffers, check_dtype, shape_str
from .layers import LAYER_TYPES as CORE_LAYER_TYPES
from .layers import ActivationLayer, Layer, Linear, MergeLayer, add_into, check_features
from .losses import Loss, Objective, get_loss
from .normalization import BatchNorm1d, LayerNorm
from .plots import plot_graph
from .training import History, Meter

EVAL_BATCH = 1000  # rows per forward pass in predict and evaluate
# Every layer a saved model may hold, by class name.
LAYER_TYPES = {**CORE_LAYER_TYPES, **{cls.__name__: cls for cls in (BatchNorm1d, LayerNorm)}}


# -- the stages of a model's plan: each reads the values in slots ``sources`` and writes
# slot ``target``; backward returns the gradients of its sources (None: not asked for).


class _FusedLinearActivation:
    """A Linear followed by an activation whose gradient needs only its output: the
    forward is one ops.linear call with the activation fused in."""

    def __init__(self, linear: Linear, activation: ActivationLayer, sources: list[int], target: int):
        self.linear, self.activation = linear, activation
        self.sources, self.target = sources, target
        self.has_parameters = True

    def forward(self, inputs: list, training: bool):
        y = self.linear.forward_fused(inputs[0], self.activation.op_name, self.activation.op_params())
        self.activation.set_fused_output(y)
        return y

    def backward(self, grad_out, input_grad: bool):
        dx = self.linear.backward(self.activation.backward(grad_out), input_grad)
        return [dx] if input_grad else None


class _Single:
    """A layer of one input as a stage of the plan."""

    def __init__(self, layer: Layer, sources: list[int], target: int):
        self.layer, self.sources, self.target = layer, sources, target
        self.has_parameters = bool(layer.named_parameters())

    def forward(self, inputs: list, training: bool):
        return self.layer.forward(inputs[0], training)

    def backward(self, grad_out, input_grad: bool):
        dx = self.layer.backward(grad_out, input_grad)
        return [dx] if input_grad else None


class _MergeStage(_Single):
    """A merge layer as a stage of the plan."""

    def forward(self, inputs: list, training: bool):
        return self.layer.forward(inputs, training)

    def backward(self, grad_out, input_grad: bool):
        return self.layer.backward(grad_out, input_grad)


def _per_name(value, names: list[str], what: str, where: str, *, arrays: bool, kind: str = "outputs") -> list:
    """``value`` given for each of ``names`` (the model's inputs or outputs, ``kind``): a
    dict by name, or a list or tuple in the order of ``names``. For a single name the
    value itself works too; for ``arrays`` a list is then an array-like, unless it holds
    just one array (code written for any number of inputs or outputs)."""
    if isinstance(value, dict):
        missing = [name for name in names if name not in value]
        unexpected = [key for key in value if key not in names]
        if missing or unexpected:
            raise ValueError(f"{where}: {what} for {names}: missing {missing}, unexpected {unexpected}")
        return [value[name] for name in names]
    if len(names) == 1 and isinstance(value, (list, tuple)) and len(value) == 1 and arrays \
            and (isinstance(value[0], np.ndarray) or _arrays.is_device_array(value[0])):
        return list(value)
    if len(names) == 1 and (arrays or not isinstance(value, (list, tuple))):
        return [value]
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"{where}: the model has {len(names)} {kind} {names}: give {what} as a list "
                        f"in that order or a dict by name, got {type(value).__name__}")
    if len(value) != len(names):
        raise ValueError(f"{where}: {len(names)} {what} expected (for {names}), got {len(value)}")
    return list(value)


def _check_loss_weight(value, name: str) -> float:
    return _validate.real("", f"loss weight of output {name!r}", value, low=0, expected="a finite number >= 0",
                          type_error=ValueError)


# ---------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------


def _layer_config(layer: Layer) -> dict:
    return {"type": type(layer).__name__, **layer.config()}


def _layer_from_config(spec: dict) -> Layer:
    spec = dict(spec)
    kind = spec.pop("type")
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}")
    return LAYER_TYPES[kind](**spec)


class Graph:
    """A model whose layers form a directed acyclic graph: one or more inputs, one or
    more outputs, nodes that feed several others, and merges (:class:`Add`,
    :class:`Concatenate`). Calling a layer on nodes returns a node::

        x = nn.Input(784)
        h = nn.ReLU()(nn.Linear(784, 256)(x))
        r = nn.ReLU()(nn.Linear(256, 256)(h))
        model = nn.Graph(x, nn.Linear(256, 10)(nn.Add()(h, r)), backend="cython")

    ``inputs``: an :class:`Input` or a list of them (the order in which ``fit``,
    ``predict`` and ``evaluate`` take their arrays; a dict by input name works too).
    ``outputs``: a node or a list of nodes (then ``predict`` returns a list of arrays and
    ``fit`` takes a target array and a loss per output). :meth:`from_nodes` builds a
    model from named nodes instead. Nodes no output depends on are not part of it.

    Everything is checked here, before anything runs: a cycle, an input that is never
    fed, a node that reaches no output, a layer used by two nodes, a Linear whose
    ``in_features`` differs from the width it is given, and merges of widths that do
    not fit raise ValueError naming the nodes and shapes.

    The forward pass runs in a topological order fixed here; the backward pass runs in
    the reverse order and sums the gradients of a node that feeds several others. A
    Linear read only by an activation whose gradient needs only its output runs fused
    with it (one ops.linear call), as in a Sequential. Parameters are named after their
    node ("linear_0.W", ...) and listed in the topological order.
    """

    FORMAT = "nnkern.Graph"  # the "format" entry of a saved model's metadata

    def __init__(self, inputs, outputs, *, backend: str | None = None, dtype=np.float32):
        self._build(*named_graph(inputs, outputs), backend, dtype)

    @classmethod
    def from_nodes(cls, inputs, nodes, outputs, *, backend: str | None = None, dtype=np.float32) -> Graph:
        """A graph model from named nodes, listed in any order::

            nn.Graph.from_nodes(
                inputs={"x": 784},
                nodes=[("hidden", nn.Linear(784, 256), "x"), ("act", nn.ReLU(), "hidden"),
                       ("block", nn.Linear(256, 256), "act"), ("sum", nn.Add(), ["act", "block"]),
                       ("logits", nn.Linear(256, 10), "sum")],
                outputs="logits")

        ``inputs``: {name: features}, or (name, features) pairs, in the order of the
        model's inputs. ``nodes``: (name, layer, the name or list of names it reads).
        ``outputs``: a node name or a list of them."""
        pairs = list(inputs.items()) if isinstance(inputs, dict) else [tuple(pair) for pair in inputs]
        input_specs = [(name, check_features(features, f"features of input {name!r}", "Graph"))
                       for name, features in pairs]
        node_specs = []
        for spec in nodes:
            if not isinstance(spec, (list, tuple)) or len(spec) != 3:
                raise TypeError(f"Graph.from_nodes: a node is (name, layer, input names), got {spec!r}")
            name, layer, sources = spec
            node_specs.append((name, layer, (sources,) if isinstance(sources, str) else tuple(sources)))
        outputs = [outputs] if isinstance(outputs, str) else list(outputs)
        graph = Graph.__new__(Graph)
        graph._build(input_specs, node_specs, outputs, backend, dtype)
        return graph

    # -- building ---------------------------------------------------------------------

    def _build(self, input_specs, node_specs, output_names, backend, dtype) -> None:
        self.backend = get_backend() if backend is None else backend
        backend_module(self.backend)  # unknown or unusable backends fail here, with the reason
        self.dtype = check_dtype(dtype, type(self).__name__)
        self.nodes = checked_nodes(type(self).__name__, input_specs, node_specs, list(output_names))
        self.input_names = [name for name, _ in input_specs]
        self.output_names = list(output_names)
        self.layers = [node.layer for node in self.nodes if node.layer is not None]
        for layer in self.layers:
            layer.bind(self.backend, self.dtype)
        slot = {node.name: i for i, node in enumerate(self.nodes)}
        self._input_slots = [slot[name] for name in self.input_names]
        self._output_slots = [slot[name] for name in self.output_names]
        self._stages = self._plan(slot)
        # which node values need a gradient: those that parameters feed into
        self._needs_grad = [False] * len(self.nodes)
        for stage in self._stages:
            self._needs_grad[stage.target] = stage.has_parameters or any(self._needs_grad[s] for s in stage.sources)
        self.is_chain = (len(self.input_names) == 1 and self.output_names == [self.nodes[-1].name]
                         and all(node.inputs == (before.name,) for before, node in zip(self.nodes, self.nodes[1:])))
        self._buffers = Buffers()
        self._forward_rows = None  # the batch size of the last forward pass
        self.loss: Loss | dict | None = None
        self.loss_weights = None
        self.stop_training = False
        self.training = True  # the mode model(x) and forward(x) compute in, as torch's (see train())

    def _plan(self, slot: dict) -> list:
        """The stages of the forward pass, in topological order; a Linear read only by an
        activation whose gradient needs only its output is fused with it."""
        readers = {node.name: [] for node in self.nodes}
        for node in self.nodes:
            for source in node.inputs:
                readers[source].append(node.name)
        by_name = {node.name: node for node in self.nodes}
        stages, fused = [], set()
        for node in self.nodes:
            layer = node.layer
            if layer is None or node.name in fused:
                continue
            sources = [slot[source] for source in node.inputs]
            if isinstance(layer, Linear) and node.name not in self.output_names and len(readers[node.name]) == 1:
                reader = by_name[readers[node.name][0]]
                if isinstance(reader.layer, ActivationLayer) and reader.layer.grad_from_output:
                    stages.append(_FusedLinearActivation(layer, reader.layer, sources, slot[reader.name]))
                    fused.add(reader.name)
                    continue
            stage = _MergeStage if isinstance(layer, MergeLayer) else _Single
            stages.append(stage(layer, sources, slot[node.name]))
        return stages

    def __repr__(self) -> str:
        return (f"Graph(inputs={self.input_names}, outputs={self.output_names}, nodes={len(self.nodes)}, "
                f"backend={self.backend!r}, dtype={self.dtype.name})")

    # -- description --------------------------------------------------------------------

    def summary(self, print_fn=print) -> str:
        """A table of the nodes in topological order: name, layer, the nodes it reads,
        output shape and parameter count, with the totals. Printed with ``print_fn``
        (None: not printed) and returned."""
        text = summary_table(self)
        if print_fn is not None:
            print_fn(text)
        return text

    def to_dot(self) -> str:
        """The graph in Graphviz's DOT language (``dot -Tpng``): a box per node with its
        layer and output shape, an arrow per edge; inputs and outputs shaded."""
        return dot_text(self)

    def plot(self, path, *, title: str | None = None) -> str:
        """Draw the graph (nodes, shapes, edges) to an image file with matplotlib
        (``pip install nnkern[plot]``); see :func:`nnkern.plots.plot_graph`."""
        return plot_graph(self, path, title=title)

    # -- parameters ----------------------------------------------------------------

    def named_parameters(self) -> list[tuple[str, object]]:
        """("<node>.W", W), ("<node>.b", b), ... in the topological order of the nodes."""
        return [(f"{node.name}.{name}", p) for node in self.nodes if node.layer is not None
                for name, p in node.layer.named_parameters()]

    def parameters(self) -> list:
        """The parameter arrays in layer order (W0, b0, W1, b1, ...); writing into them
        (``p[...] = values``) changes the model."""
        return [p for _, p in self.named_parameters()]

    def gradients(self) -> list:
        """The gradient arrays, in the order of :meth:`parameters`, written by backward."""
        return [g for layer in self.layers for _, g in layer.named_gradients()]

    def largest_product(self, rows: int) -> int:
        """The multiply-adds of the model's largest Linear product for a batch of ``rows``
        (0 without Linear layers): the work by which a training step picks its threads."""
        return rows * max((layer.in_features * layer.out_features for layer in self.layers
                           if isinstance(layer, Linear)), default=0)

    def named_buffers(self) -> list[tuple[str, object]]:
        """("<node>.running_mean", array), ...: the layers' saved state that is no
        parameter (BatchNorm1d's running statistics), in the order of the nodes."""
        return [(f"{node.name}.{name}", b) for node in self.nodes if node.layer is not None
                for name, b in node.layer.named_buffers()]

    def state_dict(self) -> dict[str, np.ndarray]:
        """Host copies of the parameters and buffers, keyed as in :meth:`named_parameters`
        and :meth:`named_buffers`."""
        return {name: _arrays.host_copy(p) for name, p in [*self.named_parameters(), *self.named_buffers()]}

    def load_state_dict(self, state: dict) -> None:
        """Copy the arrays of ``state`` (keys and shapes as :meth:`state_dict`) into the
        parameters and buffers, converting them to each array's dtype."""
        own = dict([*self.named_parameters(), *self.named_buffers()])
        missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or unexpected:
            raise ValueError(f"load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        values = {}
        for name, p in own.items():
            value = np.asarray(_arrays.to_host(state[name]))
            if value.shape != tuple(p.shape):
                raise ValueError(
                    f"load_state_dict: {name} has shape ({shape_str(value.shape)}), "
                    f"the model's has ({shape_str(p.shape)})"
                )
            values[name] = np.ascontiguousarray(value, dtype=p.dtype)
        for name, p in own.items():
            p[...] = values[name]

    def config(self) -> dict:
        """The architecture: inputs and their widths, the nodes (name, layer type and
        constructor arguments, the nodes read), the outputs, and the dtype."""
        features = {node.name: node.features for node in self.nodes}
        return {"inputs": [{"name": name, "features": features[name]} for name in self.input_names],
                "nodes": [{"name": node.name, "layer": _layer_config(node.layer), "inputs": list(node.inputs)}
                          for node in self.nodes if node.layer is not None],
                "outputs": list(self.output_names),
                "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict, *, backend: str | None = None, dtype=None) -> Graph:
        """A new model with the architecture of ``config`` (weights freshly initialised)."""
        return Graph.from_nodes({spec["name"]: spec["features"] for spec in config["inputs"]},
                                [(spec["name"], _layer_from_config(spec["layer"]), spec["inputs"])
                                 for spec in config["nodes"]],
                                config["outputs"], backend=backend, dtype=config["dtype"] if dtype is None else dtype)

    def clone(self, *, backend: str | None = None, dtype=None) -> Graph:
        """A copy with the same architecture and weights, on ``backend`` (default: this
        model's) in ``dtype`` (default: this model's)."""
        copy = type(self).from_config(self.config(), backend=backend or self.backend, dtype=dtype or self.dtype)
        copy.load_state_dict(self.state_dict())
        return copy

    # -- forward and backward -------------------------------------------------------

    def _input_owner(self, index: int) -> str:
        """What takes input ``index``, for error messages."""
        return f"input {self.input_names[index]!r}"

    def _checked_input(self, index: int, x):
        """``x`` (a host array or a device array) after checking its type, that it is
        2-D, and its width."""
        where = type(self).__name__ + (f" input {self.input_names[index]!r}" if len(self.input_names) > 1 else "")
        if _arrays.is_device_array(x):
            if np.dtype(x.dtype) != self.dtype:
                raise TypeError(f"{where}: device input has dtype {x.dtype}, the model computes in {self.dtype}")
        else:
            x = np.asarray(x)
            if x.dtype.kind not in "fiub":
                raise TypeError(f"{where}: input has dtype {x.dtype}; expected real numbers")
        if len(x.shape) != 2:
            raise ValueError(
                f"{where}: input must be 2-D (samples x features), got shape ({shape_str(x.shape)})"
                + ("; use x.reshape(1, -1) for one sample" if len(x.shape) == 1 else "")
            )
        width = self.nodes[self._input_slots[index]].features
        if width is not None and x.shape[1] != width:
            raise ValueError(
                f"{type(self).__name__}: input of shape ({shape_str(x.shape)}) does not fit "
                f"{self._input_owner(index)}, which takes inputs of shape (N x {width})"
            )
        return x

    def _as_input(self, index: int, x):
        """``x`` as a C-contiguous 2-D array of the model's dtype in the model's memory,
        after checking it (one copy into a reused buffer at most)."""
        x = self._checked_input(index, x)
        if _arrays.is_device_array(x):
            return x
        if self.backend not in _arrays.DEVICE_BACKENDS and x.dtype == self.dtype and x.flags.c_contiguous:
            return x
        buffer = self._buffers.get(f"input{index}", tuple(x.shape), self.dtype, self.backend)
        buffer[...] = np.ascontiguousarray(x, dtype=self.dtype)
        return buffer

    def _input_arrays(self, x) -> list:
        """The model's input arrays from ``x``: an array (one input), a list or tuple of
        arrays in the order of :attr:`input_names`, or a dict by input name."""
        return _per_name(x, self.input_names, "input arrays", type(self).__name__, arrays=True, kind="inputs")

    def _target_arrays(self, y) -> list:
        return _per_name(y, self.output_names, "target arrays", type(self).__name__, arrays=True)

    def _forward(self, arrays: list, training: bool) -> list:
        values = [None] * len(self.nodes)
        for index, (slot, x) in enumerate(zip(self._input_slots, arrays)):
            values[slot] = self._as_input(index, x)
        rows = {values[slot].shape[0] for slot in self._input_slots}
        if len(rows) > 1:
            shapes = ", ".join(f"{name!r} ({shape_str(values[slot].shape)})"
                               for name, slot in zip(self.input_names, self._input_slots))
            raise ValueError(f"{type(self).__name__}: the inputs have different numbers of samples: {shapes}")
        for stage in self._stages:
            values[stage.target] = stage.forward([values[source] for source in stage.sources], training)
        self._forward_rows = rows.pop()
        return [values[slot] for slot in self._output_slots]

    def forward(self, x, training: bool | None = None):
        """The model's output for the batch ``x`` (an array, or a list or dict of arrays
        for several inputs); a list of arrays for several outputs, in the model's mode
        (:meth:`train` / :meth:`eval`) unless ``training`` says which. The results are
        workspaces reused by the next forward pass of the same batch size."""
        outputs = self._forward(self._input_arrays(x), self.training if training is None else bool(training))
        return outputs[0] if len(outputs) == 1 else outputs

    __call__ = forward

    # -- modes, as torch.nn.Module's ------------------------------------------------------

    def train(self, mode: bool = True):
        """Set training mode (``mode=True``: Dropout drops, BatchNorm normalises by the
        batch and updates its running statistics) or evaluation mode (``False``); returns
        the model. ``model(x)`` and ``forward(x)`` compute in the mode set; ``fit`` trains
        in training mode and restores the mode it found; ``predict`` and ``evaluate``
        always compute in evaluation mode. A ``backward`` after an evaluation-mode forward
        works as torch's: it differentiates what that forward computed (Dropout as the
        identity, BatchNorm with its running statistics)."""
        if not isinstance(mode, (bool, np.bool_)):
            raise TypeError(f"train: mode must be True or False, got {mode!r}")
        self.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: ``train(False)``."""
        return self.train(False)

    def backward(self, grad_output, input_grad: bool = False):
        """Backpropagate ``grad_output`` (the loss gradient with respect to the output, or
        a list of them, one per output) through the last forward pass, in reverse
        topological order, summing the gradients that reach a node from several readers:
        writes every parameter gradient, and returns the gradient with respect to the
        input (a list for several inputs) when ``input_grad``."""
        grads = []
        for name, slot, grad in zip(self.output_names, self._output_slots, self._target_arrays(grad_output)):
            if not _arrays.is_device_array(grad):  # the model's dtype and memory, as its own gradients
                grad = np.asarray(grad)
                if self.backend in _arrays.DEVICE_BACKENDS:
                    grad = _arrays.from_host(grad, self.dtype, self.backend)
                elif grad.dtype != self.dtype or not grad.flags.c_contiguous:
                    grad = np.ascontiguousarray(grad, dtype=self.dtype)
            width = self.nodes[slot].features
            if self._forward_rows is None or len(grad.shape) != 2 or grad.shape[0] != self._forward_rows \
                    or (width is not None and grad.shape[1] != width):
                raise ValueError(f"backward: the gradient of output {name!r} has shape ({shape_str(grad.shape)}); "
                                 + ("no forward pass ran before" if self._forward_rows is None else
                                    f"the last forward pass gave {width_str(width).replace('N', str(self._forward_rows))}"))
            grads.append(grad)
        return self._backward(grads, input_grad)

    def _backward(self, grads: list, input_grad: bool):
        summed = [None] * len(self.nodes)  # each node's gradient, a sum once several arrive
        owned = [False] * len(self.nodes)  # whether summed[slot] is this model's own buffer
        for slot, grad in zip(self._output_slots, grads):
            self._add_gradient(summed, owned, slot, grad)
        for stage in reversed(self._stages):
            wanted = [input_grad or self._needs_grad[source] for source in stage.sources]
            if not (stage.has_parameters or any(wanted)):
                continue
            source_grads = stage.backward(summed[stage.target], any(wanted))
            if source_grads is not None:
                for source, grad, want in zip(stage.sources, source_grads, wanted):
                    if want:
                        self._add_gradient(summed, owned, source, grad)
        if not input_grad:
            return None
        grads = [summed[slot] for slot in self._input_slots]
        return grads[0] if len(grads) == 1 else grads

    def _add_gradient(self, summed: list, owned: list, slot: int, grad) -> None:
        """Add ``grad`` to the gradient of node ``slot``: the first one is kept as it is
        (no copy); a second is summed into a buffer of the model (the axpy kernel)."""
        if summed[slot] is None:
            summed[slot] = grad
            return
        if not owned[slot]:
            buffer = self._buffers.get(f"grad{slot}", tuple(grad.shape), self.dtype, self.backend)
            buffer[...] = summed[slot]
            summed[slot], owned[slot] = buffer, True
        add_into(summed[slot], grad, 1.0, self.backend)

    def _objective(self, loss, loss_weights=None) -> Objective:
        """The objective of ``loss`` (a Loss or its name for every output; a list or a
        dict by output name for one each) weighted by ``loss_weights`` (None: 1 each)."""
        if isinstance(loss, Objective):
            return loss
        names = self.output_names
        losses = []
        specs = _per_name(loss, names, "losses", "fit", arrays=False) if isinstance(loss, (list, tuple, dict)) \
            else [loss] * len(names)
        for spec in specs:
            loss = get_loss(spec)
            if any(loss is other for other in losses):  # a loss keeps its last gradient: one per output
                loss = type(loss)(**loss.config())
            losses.append(loss)
        weights = [1.0] * len(names) if loss_weights is None else \
            [_check_loss_weight(w, name) for w, name in zip(_per_name(loss_weights, names, "loss weights", "fit",
                                                                      arrays=False), names)]
        return Objective(losses, weights, names)

    def compute_gradients(self, x, y, loss, sample_weight=None) -> tuple[float, object]:
        """Forward (training mode), loss, backward: returns (loss value, model output)
        and leaves the gradients in :meth:`gradients`. With several outputs ``y`` and
        ``loss`` are given per output (see :meth:`fit`) and the value is the weighted sum.
        ``sample_weight`` (one number >= 0 per row) makes the loss the rows' weighted mean."""
        objective = self._objective(loss)
        outputs = self._forward(self._input_arrays(x), training=True)
        value = objective.forward(outputs, self._target_arrays(y), self.backend, sample_weight)
        self._backward(objective.backward(), input_grad=False)
        return value, (outputs[0] if len(outputs) == 1 else outputs)

    def train_step(self, x, y, optimizer, loss, sample_weight=None) -> tuple[float, object]:
        """One optimisation step on the batch (x, y): returns (loss before the step,
        model output); the layer-by-layer engine of ``fit`` calls this once per batch."""
        value, output = self.compute_gradients(x, y, loss, sample_weight)
        optimizer.step()
        return value, output

    # -- training and inference -------------------------------------------------------

    def fit(self, x, y, *, epochs: int = 1, batch_size: int = 32, optimizer, loss="cross_entropy",
            shuffle: bool = True, seed=None, validation_data=None, verbose: bool = True,
            on_nonfinite: str = "raise", callbacks=(), fused: bool = True, loss_weights=None,
            sample_weight=None, max_grad_norm=None) -> History:
        """Train on (x, y) for ``epochs`` passes in mini-batches of ``batch_size``.

        ``optimizer``: an nnkern.optim optimizer (bound to this model's parameters here
        if it is not already) or its name. ``loss``: a Loss or its name. ``shuffle``
        draws a new order every epoch from a generator seeded with ``seed``.
        ``validation_data=(x_val, y_val)`` adds "val_loss" and "val_accuracy".
        ``verbose`` prints one line per epoch. ``callbacks``: objects with the hooks of
        :class:`Callback` (progress bars, :mod:`nnkern.callbacks`' early stopping and
        best-weights restore); the optimizer's learning-rate schedule
        (:class:`nnkern.optim.LRScheduler`) is stepped after every epoch or batch. A NaN or infinite batch loss
        raises :class:`NonFiniteLossError` naming the epoch and step, unless
        ``on_nonfinite="ignore"``. ``fused`` lets a backend with a fused training
        engine (see :mod:`nnkern.engine`) run each step in one compiled call when the
        model, loss and optimizer allow it; ``fused=False`` forces the layer-by-layer
        path. Returns a :class:`History`.

        A graph model with several inputs takes ``x`` as a list of arrays (in the order
        of its inputs) or a dict by input name; with several outputs, ``y`` likewise,
        ``loss`` is one loss for every output or a list or dict of them, and
        ``loss_weights`` (default 1 each) weighs them: the loss minimised is
        ``sum(weight * loss)``. The logs then hold that "loss" and, per output,
        "<output>_loss" and "<output>_accuracy" (for classification losses).

        ``sample_weight`` (one number >= 0 per sample of ``x``) trains on the weighted mean
        loss of each batch, on every engine (a batch whose weights are all zero takes no
        step); the epoch's "loss" log is then the weighted mean too. ``max_grad_norm``
        clips the gradients to that global norm before every update, as
        ``torch.nn.utils.clip_grad_norm_`` (:func:`nnkern.optim.clip_grad_norm_`; the
        layer-by-layer engine runs it).
        """
        return training.fit(self, x, y, epochs=epochs, batch_size=batch_size, optimizer=optimizer, loss=loss,
                            shuffle=shuffle, seed=seed, validation_data=validation_data, verbose=verbose,
                            on_nonfinite=on_nonfinite, callbacks=callbacks, fused=fused, loss_weights=loss_weights,
                            sample_weight=sample_weight, max_grad_norm=max_grad_norm)

    def _chunks(self, x, batch_size: int):
        batch_size = _validate.integer("", "batch_size", batch_size, minimum=1, expected="a positive integer",
                                       type_error=ValueError)
        for start in range(0, len(x), batch_size):
            yield start, min(start + batch_size, len(x))

    def evaluate(self, x, y, *, loss=None, loss_weights=None, batch_size: int = EVAL_BATCH):
        """(mean loss, accuracy) over (x, y); accuracy is None for regression losses.
        ``loss`` (and ``loss_weights``) default to those of the last ``fit``, else cross
        entropy. With several outputs: (weighted loss, {output name: accuracy or None})."""
        if loss is None:
            loss, loss_weights = self.loss or "cross_entropy", self.loss_weights if loss_weights is None else loss_weights
        logs = self._evaluate(x, y, self._objective(loss, loss_weights), batch_size)
        if len(self.output_names) == 1:
            return logs["loss"], logs.get("accuracy")
        return logs["loss"], {name: logs.get(f"{name}_accuracy") for name in self.output_names}

    def _evaluate(self, x, y, objective: Objective, batch_size: int = EVAL_BATCH) -> dict:
        """The logs of :class:`nnkern.training.Meter` over (x, y), in evaluation mode."""
        xs = [np.asarray(a) for a in self._input_arrays(x)]
        ys = [np.asarray(a) for a in self._target_arrays(y)]
        counts = [len(a) if a.ndim else 0 for a in (*xs, *ys)]
        if len(set(counts)) > 1 or counts[0] == 0:
            raise ValueError("evaluate: x and y need the same, non-zero number of samples, got "
                             + " and ".join(str(count) for count in counts))
        meter = Meter(objective)
        for start, stop in self._chunks(xs[0], batch_size):
            outputs = self._forward([a[start:stop] for a in xs], training=False)
            targets = [a[start:stop] for a in ys]
            value = objective.forward(outputs, targets, self.backend)
            meter.add(stop - start, value, objective.values, objective.correct(outputs, targets))
        return meter.logs()

    def predict(self, x, *, batch_size: int = EVAL_BATCH):
        """The model's outputs for ``x`` as a new host array (evaluation mode); a list of
        arrays, one per output, for several outputs."""
        xs = [self._checked_input(i, np.asarray(a)) for i, a in enumerate(self._input_arrays(x))]
        if len({len(a) for a in xs}) > 1:
            raise ValueError("predict: the inputs have different numbers of samples, shapes "
                             + ", ".join(f"({shape_str(a.shape)})" for a in xs))
        if len(xs[0]) == 0:
            outputs = [np.empty((0, self.nodes[slot].features or xs[0].shape[1]), dtype=self.dtype)
                       for slot in self._output_slots]
        else:
            parts = [[_arrays.host_copy(output) for output in self._forward([a[start:stop] for a in xs], False)]
                     for start, stop in self._chunks(xs[0], batch_size)]
            outputs = [np.concatenate(chunks) if len(chunks) > 1 else chunks[0] for chunks in zip(*parts)]
        return outputs[0] if len(outputs) == 1 else outputs

    def predict_classes(self, x, *, batch_size: int = EVAL_BATCH):
        """Predicted class indices: the argmax of each output row, or ``output > 0.5``
        for a single output column (a list, one per output, for several outputs)."""
        outputs = self.predict(x, batch_size=batch_size)

        def classes(output):
            if output.shape[1] == 1:
                return (output[:, 0] > 0.5).astype(np.int64)
            return np.argmax(output, axis=1)

        return classes(outputs) if len(self.output_names) == 1 else [classes(output) for output in outputs]

    # -- files ------------------------------------------------------------------------

    def save(self, path) -> None:
        """Write the architecture, dtype and weights to one .npz file at ``path``
        (exactly that name), atomically: a temporary file in the same directory,
        flushed to disk, then renamed over ``path``, so a failed or interrupted save
        leaves any previous file there intact. A folder that does not exist or takes no
        files is an OSError naming the path."""
        modelfile.write(path, {"format": self.FORMAT, **self.config()}, self.state_dict())


class Sequential(Graph):
    """Layers applied in order, built for one backend and dtype: the graph of a chain,
    whose nodes are named by layer index ("0", "1", ...; parameters "0.W", "0.b", ...).

    ``Sequential(nn.Linear(784, 100), nn.ReLU(), nn.Linear(100, 10))``; a single list of
    layers works too. Layer widths are checked here: a Linear whose ``in_features`` does
    not match the width before it is an error naming both layers.
    """

    FORMAT = "nnkern.Sequential"

    def __init__(self, *layers, backend: str | None = None, dtype=np.float32):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"Sequential: layer {i} is {type(layer).__name__}, not an nnkern.nn layer")
            if isinstance(layer, MergeLayer):
                raise ValueError(f"Sequential: layer {i} {layer!r} merges several inputs; build an nn.Graph for that")
        if not layers:
            raise ValueError("Sequential: a model needs at least one layer")
        if len({id(layer) for layer in layers}) != len(layers):
            raise ValueError("Sequential: the same layer object appears more than once; create one per position")
        self.layers = list(layers)
        self.in_features, self.out_features = self._check_widths()
        self._first_linear = next((layer for layer in self.layers if isinstance(layer, Linear)), None)
        names = [str(i) for i in range(len(layers))]
        self._build([("input", self.in_features)],
                    [(name, layer, (source,)) for name, layer, source in zip(names, layers, ["input", *names])],
                    [names[-1]], backend, dtype)

    def _check_widths(self):
        """(input width, output width) of the model; None where any width fits."""
        width, source, first = None, None, None
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Linear):
                if width is not None and layer.in_features != width:
                    raise ValueError(
                        f"Sequential: layer {i} {layer!r} expects {layer.in_features} input features, "
                        f"but layer {source} {self.layers[source]!r} outputs {width}"
                    )
                if first is None:
                    first = layer.in_features
                source = i
            width = layer.output_features(width)
        return first, width

    def _input_owner(self, index: int) -> str:
        return f"the first Linear layer {self._first_linear!r}"

    def __repr__(self) -> str:
        layers = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential({layers}, backend={self.backend!r}, dtype={self.dtype.name})"

    def config(self) -> dict:
        """The architecture: layer types and constructor arguments, and the dtype."""
        return {"layers": [_layer_config(layer) for layer in self.layers], "dtype": self.dtype.name}

    @classmethod
    def from_config(cls, config: dict, *, backend: str | None = None, dtype=None) -> Sequential:
        """A new model with the architecture of ``config`` (weights freshly initialised)."""
        layers = [_layer_from_config(spec) for spec in config["layers"]]
        return cls(*layers, backend=backend, dtype=config["dtype"] if dtype is None else dtype)


_MODEL_TYPES = {Sequential.FORMAT: Sequential, Graph.FORMAT: Graph}


def load(path, *, backend: str | None = None) -> Graph:
    """The model saved at ``path`` by ``save`` (a :class:`Sequential` or a :class:`Graph`),
    rebuilt with the same architecture, dtype and weights on ``backend`` (None: the
    current backend).
    A file that is not a complete nnkern model raises :class:`nnkern.modelfile.ModelFileError`."""
    backend_module(get_backend() if backend is None else backend)  # fails here, not as a file error
    path, meta, state = modelfile.read(path, formats=_MODEL_TYPES)
    try:
        model = _MODEL_TYPES[meta["format"]].from_config(meta, backend=backend)
        model.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as exc:
        raise modelfile.ModelFileError(f"{path}: inconsistent nnkern model file ({exc})") from exc
    return model
