"""Graph algorithms over named nodes, for :class:`nnkern.nn.Graph`: the topological sort
that fixes the order of the forward pass (its reverse is the order of backpropagation),
the cycle it reports when there is none, and which nodes an output depends on.

A graph is given as ``inputs_of``: node name -> the names it reads, in order (a name may
repeat, as in ``Add()(h, h)``). Every name read must be a key of ``inputs_of``.
"""

from __future__ import annotations

import heapq


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
