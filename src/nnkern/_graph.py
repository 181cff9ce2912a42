"""The graph of a :class:`nnkern.nn.Graph` model, before it runs: the nodes named from the
layers called on nodes (:func:`named_graph`), every check of the model's structure
(:func:`checked_nodes`), the topological sort that fixes the order of the forward pass (its
reverse is the order of backpropagation), the cycle it reports when there is none, and which
nodes an output depends on.

A graph is given as ``inputs_of``: node name -> the names it reads, in order (a name may
repeat, as in ``Add()(h, h)``). Every name read must be a key of ``inputs_of``.
"""

from __future__ import annotations

import dataclasses
import heapq

import numpy as np

from .layers import Input, Layer, MergeLayer, Node, arity_problem, check_node_name


def topological_order(inputs_of: dict[str, tuple[str, ...]]) -> list[str]:
    """Every node after all the nodes it reads (Kahn's algorithm). Stable: whenever
    several nodes are ready, the one listed first in ``inputs_of`` comes first, so a
    graph listed in a valid order keeps it. A cycle raises ValueError naming its nodes."""
    position = {name: i for i, name in enumerate(inputs_of)}
    waiting_on = {name: len(sources) for name, sources in inputs_of.items()}
    readers: dict[str, list[str]] = {name: [] for name in inputs_of}
    for name, sources in inputs_of.items():
        for source in sources:
            readers[source].append(name)
    ready = [(position[name], name) for name, count in waiting_on.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        _, name = heapq.heappop(ready)
        order.append(name)
        for reader in readers[name]:
            waiting_on[reader] -= 1
            if waiting_on[reader] == 0:
                heapq.heappush(ready, (position[reader], reader))
    if len(order) < len(inputs_of):
        cycle = " -> ".join(repr(name) for name in find_cycle(inputs_of, set(inputs_of) - set(order)))
        raise ValueError(f"the nodes {cycle} form a cycle; a graph model must be acyclic, since its "
                         "forward pass runs in a topological order")
    return order


def find_cycle(inputs_of: dict[str, tuple[str, ...]], unsorted: set[str]) -> list[str]:
    """A cycle among ``unsorted``, the nodes a topological sort could not place (each
    reads at least one other of them), as [a, b, ..., a] in the direction data flows."""
    start = min(unsorted, key=list(inputs_of).index)
    path, seen = [start], {start: 0}
    while True:
        source = next(s for s in inputs_of[path[-1]] if s in unsorted)
        if source in seen:
            cycle = path[seen[source]:] + [source]
            return cycle[::-1]  # walked against the edges: reverse to follow the data
        seen[source] = len(path)
        path.append(source)


def ancestors(names, inputs_of: dict[str, tuple[str, ...]]) -> set[str]:
    """``names`` and every node they read, directly or through others."""
    found, stack = set(), list(names)
    while stack:
        name = stack.pop()
        if name not in found:
            found.add(name)
            stack.extend(inputs_of[name])
    return found


def width_str(features: int | None) -> str:
    return f"(N x {'?' if features is None else features})"


@dataclasses.dataclass(frozen=True)
class GraphNode:
    """A node of a built model: its name, its layer (None for an input), the names of
    the nodes it reads, and the width of its output (None: any width)."""

    name: str
    layer: Layer | None
    inputs: tuple[str, ...]
    features: int | None


def named_graph(inputs, outputs) -> tuple[list, list, list]:
    """The graph between ``inputs`` and ``outputs`` (Nodes) as named specs for
    :meth:`nnkern.nn.Graph`'s builder: every node the outputs depend on, each after the nodes it
    reads, named by its ``name`` or else "<layer type>_<k>" ("input_<k>" for inputs)."""
    inputs = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
    outputs = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    for node in inputs:
        if not isinstance(node, Input):
            raise TypeError(f"Graph: inputs must be nn.Input nodes, got {node!r}")
    for node in outputs:
        if not isinstance(node, Node):
            raise TypeError(f"Graph: outputs must be nodes (what calling a layer on nodes returns), got {node!r}")
    order, done = [], set()
    for output in outputs:  # depth first, each node after the nodes it reads
        stack = [(output, False)]
        while stack:
            node, expanded = stack.pop()
            if id(node) in done:
                continue
            if expanded:
                done.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            stack.extend((source, False) for source in reversed(node.inputs) if id(source) not in done)
    names, taken, counters = {}, {node.name for node in [*inputs, *order] if node.name}, {}
    for node in [*inputs, *order]:
        if id(node) in names:
            continue
        if node.name:
            names[id(node)] = node.name
            continue
        kind = "input" if isinstance(node, Input) else type(node.layer).__name__.lower()
        k = counters.get(kind, 0)
        while f"{kind}_{k}" in taken:
            k += 1
        names[id(node)] = f"{kind}_{k}"
        taken.add(names[id(node)])
        counters[kind] = k + 1
    fed = {id(node) for node in inputs}
    for node in order:
        for source in node.inputs:
            if isinstance(source, Input) and id(source) not in fed:
                raise ValueError(
                    f"Graph: node {names[id(node)]!r} reads input {names[id(source)]!r} {width_str(source.features)}, "
                    f"which is not among the model's inputs {[names[id(n)] for n in inputs]}: it would never be fed"
                )
    input_specs = [(names[id(node)], node.features) for node in inputs]
    node_specs = [(names[id(node)], node.layer, tuple(names[id(source)] for source in node.inputs))
                  for node in order if not isinstance(node, Input)]
    return input_specs, node_specs, [names[id(node)] for node in outputs]


def checked_nodes(where: str, input_specs, node_specs, outputs) -> list[GraphNode]:
    """The nodes of a model named ``where`` in topological order, after checking
    everything the docstring of :class:`nnkern.nn.Graph` lists: names, layers, what each
    node reads, widths, a cycle, nodes that reach no output, a layer used twice."""
    inputs_of, layer_of, features_of = {}, {}, {}
    for name, features in input_specs:
        check_node_name(name, where, required=True)
        if name in inputs_of:
            raise ValueError(f"{where}: two inputs are named {name!r}")
        inputs_of[name], layer_of[name], features_of[name] = (), None, features
    for name, layer, sources in node_specs:
        check_node_name(name, where, required=True)
        if name in inputs_of:
            raise ValueError(f"{where}: two nodes are named {name!r}")
        if not isinstance(layer, Layer):
            raise TypeError(f"{where}: node {name!r} is {type(layer).__name__}, not an nnkern.nn layer")
        problem = arity_problem(layer, len(sources))
        if problem:
            raise ValueError(f"{where}: node {name!r} {layer!r} {problem}")
        inputs_of[name], layer_of[name] = tuple(sources), layer
    for name, sources in inputs_of.items():
        for source in sources:
            if source not in inputs_of:
                raise ValueError(f"{where}: node {name!r} reads {source!r}, which is neither an input of the "
                                 "model nor a node: it would never be fed")
    if not outputs:
        raise ValueError(f"{where}: a model needs at least one output")
    for name in outputs:
        if name not in inputs_of:
            raise ValueError(f"{where}: output {name!r} is not a node of the graph")
        if layer_of[name] is None:
            raise ValueError(f"{where}: output {name!r} is an input; outputs are computed by layers")
    if len(set(outputs)) != len(outputs):
        raise ValueError(f"{where}: an output is listed twice in {outputs}")
    try:
        order = topological_order(inputs_of)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    owner = {}
    for name in order:
        layer = layer_of[name]
        if layer is None:
            continue
        if id(layer) in owner:
            raise ValueError(f"{where}: the layer {layer!r} is used by nodes {owner[id(layer)]!r} and {name!r}; a "
                             "layer holds the parameters and workspaces of one node: create one layer per node")
        owner[id(layer)] = name
        widths = [features_of[source] for source in inputs_of[name]]
        if isinstance(layer, MergeLayer):
            try:
                features_of[name] = layer.output_features(widths)
            except ValueError as exc:
                listing = ", ".join(f"{s!r} {width_str(w)}" for s, w in zip(inputs_of[name], widths))
                raise ValueError(f"{where}: node {name!r} {layer!r} cannot merge {listing}: {exc}") from None
            continue
        (source,), (width,) = inputs_of[name], widths
        if layer.in_features is not None and width is not None and width != layer.in_features:
            raise ValueError(f"{where}: node {name!r} {layer!r} takes inputs of shape {width_str(layer.in_features)}, "
                             f"but {'input' if layer_of[source] is None else 'node'} {source!r} "
                             f"outputs {width_str(width)}")
        features_of[name] = layer.output_features(width)
    reached = ancestors(outputs, inputs_of)
    unused = [name for name in order if name not in reached]
    if unused:
        listing = ", ".join(f"{'input' if layer_of[name] is None else 'node'} {name!r} {width_str(features_of[name])}"
                            for name in unused)
        raise ValueError(f"{where}: {listing} reach{'es' if len(unused) == 1 else ''} no output of the model "
                         f"(outputs: {outputs}); remove {'it' if len(unused) == 1 else 'them'} or make it an output")
    return [GraphNode(name, layer_of[name], inputs_of[name], features_of[name]) for name in order]


def summary_table(model) -> str:
    """The text of :meth:`nnkern.nn.Graph.summary` for ``model``."""
    rows = [("node", "layer", "reads", "output", "parameters")]
    for node in model.nodes:
        count = sum(int(np.prod(p.shape)) for _, p in node.layer.named_parameters()) if node.layer else 0
        rows.append((node.name, "Input" if node.layer is None else repr(node.layer), ", ".join(node.inputs) or "-",
                     width_str(node.features), f"{count:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.rjust(w) if i == 4 else cell.ljust(w) for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    total = sum(int(np.prod(p.shape)) for p in model.parameters())
    lines.append("-" * len(lines[0]))
    lines.append(f"{type(model).__name__}: {len(model.nodes)} nodes, {total:,} parameters, outputs "
                 f"{', '.join(model.output_names)}; backend {model.backend}, {model.dtype.name}")
    return "\n".join(lines)


def dot_text(model) -> str:
    """The text of :meth:`nnkern.nn.Graph.to_dot` for ``model``."""
    def quoted(*parts: str) -> str:  # a DOT string of lines, each escaped
        return '"' + "\\n".join(line.replace("\\", "\\\\").replace('"', '\\"') for line in parts) + '"'

    lines = [f"digraph {quoted(type(model).__name__)} {{", "  rankdir=TB;",
             '  node [shape=box, style="rounded,filled", fillcolor=white, fontname="Helvetica"];']
    for node in model.nodes:
        what = "Input" if node.layer is None else repr(node.layer)
        fill = ", fillcolor=lightblue" if node.layer is None else (
            ", fillcolor=lightyellow" if node.name in model.output_names else "")
        lines.append(f"  {quoted(node.name)} [label={quoted(node.name, what, width_str(node.features))}{fill}];")
    for node in model.nodes:
        for source in node.inputs:
            lines.append(f"  {quoted(source)} -> {quoted(node.name)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
