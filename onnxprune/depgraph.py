"""Dependency groups: every tensor axis and parameter slice coupled to a set of channels.

Starting from each node that creates channels (`oprules.ROOTS`), a breadth-first
walk applies the op rules in both directions — to the tensor's producer and to all
its consumers — until the closure is complete. Whatever the walk meets that no rule
can map (unknown ops, graph outputs, shared weights, inconsistent maps) blocks the
whole group, and the group keeps the reason so the report can say it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import Shape, subgraph_references
from onnxprune.indexmap import identity
from onnxprune.oprules import ROOTS, RULES, Blocked, Coupling, ParamSlice, ShapeFix, Visit


@dataclass(eq=False)
class TensorAxis:
    """A tensor whose `axis` carries the group's channels at `positions` ([C, k])."""

    tensor: str
    axis: int
    positions: np.ndarray


@dataclass(eq=False)
class Group:
    """A set of channels that must be removed together, with everything they touch."""

    id: int
    channels: int
    roots: list[str]
    tensors: list[TensorAxis] = field(default_factory=list)
    params: list[ParamSlice] = field(default_factory=list)
    shape_fixes: list[ShapeFix] = field(default_factory=list)
    blocked: str | None = None
    blocked_node: str | None = None

    @property
    def prunable(self) -> bool:
        return self.blocked is None

    def nodes(self) -> list[str]:
        """Names of all nodes with a parameter in the group, roots first, no repeats."""
        names = list(self.roots) + [p.node for p in self.params]
        return list(dict.fromkeys(names))

    def summary(self) -> dict:
        """A JSON-ready description (positions omitted: they follow from the plan)."""
        return {
            "id": self.id,
            "channels": self.channels,
            "roots": self.roots,
            "tensors": [{"tensor": t.tensor, "axis": t.axis} for t in self.tensors],
            "params": [
                {"initializer": p.initializer, "node": p.node, "axis": p.axis, "role": p.role}
                for p in self.params
            ],
            "blocked": self.blocked,
            "blocked_node": self.blocked_node,
        }


def build_groups(graph: gs.Graph, shapes: Mapping[str, Shape]) -> list[Group]:
    """Analyse `graph` (topologically sorted) into channel groups, prunable or blocked."""
    builder = _GroupBuilder(graph, shapes)
    groups: list[Group] = []
    claimed: set[str] = set()
    for node in graph.nodes:
        root_rule = ROOTS.get(node.op)
        if root_rule is None or node.outputs[0].name in claimed:
            continue
        found = root_rule(node, shapes)
        if found is None:
            continue
        axis, channels = found
        if channels < 2:
            continue  # one channel cannot be pruned and stay a layer
        group = builder.build(len(groups), node, axis, channels)
        claimed.update(t.tensor for t in group.tensors)
        groups.append(group)
    return groups


class _GroupBuilder:
    def __init__(self, graph: gs.Graph, shapes: Mapping[str, Shape]) -> None:
        self.shapes = shapes
        self.graph_inputs = {t.name for t in graph.inputs}
        self.graph_outputs = {t.name for t in graph.outputs}
        self.hidden_reads = subgraph_references(graph)
        self.consumers_of: dict[str, int] = {
            name: len(t.outputs) for name, t in graph.tensors().items()
        }

    def build(self, gid: int, root: gs.Node, axis: int, channels: int) -> Group:
        group = Group(id=gid, channels=channels, roots=[root.name])
        start = root.outputs[0]
        seen: dict[str, TensorAxis] = {}
        done_params: set[tuple[str, str, int]] = set()
        done_visits: set[tuple[str, str, int]] = set()
        queue: deque[tuple[gs.Variable, int, np.ndarray]] = deque(
            [(start, axis, identity(channels))]
        )

        def block(reason: str, node: str | None) -> None:
            if group.blocked is None:
                group.blocked, group.blocked_node = reason, node

        while queue:
            tensor, t_axis, positions = queue.popleft()
            previous = seen.get(tensor.name)
            if previous is not None:
                if previous.axis != t_axis or not np.array_equal(previous.positions, positions):
                    block(
                        f"tensor '{tensor.name}' is reached with two different channel maps", None
                    )
                continue
            seen[tensor.name] = TensorAxis(tensor.name, t_axis, positions)
            group.tensors.append(seen[tensor.name])
            for reason in self._tensor_blockers(tensor):
                block(reason, None)
            visits = [(p, "out", p.outputs.index(tensor)) for p in tensor.inputs]
            for consumer in tensor.outputs:
                visits += [
                    (consumer, "in", i) for i, t in enumerate(consumer.inputs) if t is tensor
                ]
            for node, side, index in visits:
                key = (node.name, side, index)
                if key in done_visits:
                    continue
                done_visits.add(key)
                try:
                    coupling = self._apply(node, side, index, t_axis, positions)
                except Blocked as exc:
                    block(str(exc), node.name)
                    continue
                if node.op in ROOTS and side == "out" and node.name not in group.roots:
                    group.roots.append(node.name)
                for param in coupling.params:
                    pkey = (param.initializer, param.node, param.axis)
                    if pkey in done_params:
                        continue
                    done_params.add(pkey)
                    if self.consumers_of.get(param.initializer, 0) > 1:
                        block(
                            f"weight '{param.initializer}' is shared by several nodes", param.node
                        )
                    group.params.append(param)
                group.shape_fixes.extend(coupling.shape_fixes)
                for link in coupling.links:
                    queue.append((link.tensor, link.axis, link.positions))
        return group

    def _tensor_blockers(self, tensor: gs.Tensor) -> list[str]:
        reasons = []
        if tensor.name in self.graph_outputs:
            reasons.append(f"reaches graph output '{tensor.name}' (outputs keep their shape)")
        if tensor.name in self.graph_inputs:
            reasons.append(f"reaches graph input '{tensor.name}' (inputs keep their shape)")
        if tensor.name in self.hidden_reads:
            reasons.append(f"tensor '{tensor.name}' is read inside a subgraph (If/Loop/Scan)")
        return reasons

    def _apply(
        self, node: gs.Node, side: str, index: int, axis: int, positions: np.ndarray
    ) -> Coupling:
        if node.domain not in (None, "", "ai.onnx"):
            raise Blocked(f"{node.domain}.{node.op} '{node.name}' is a custom-domain op")
        rule = RULES.get(node.op)
        if rule is None:
            raise Blocked(f"{node.op} '{node.name}' has no channel rule (unknown op)")
        visit = Visit(node, side, index, axis, positions, self.shapes)
        coupling = rule(visit)
        for param in coupling.params:
            self._check_param(node, param)
        return coupling

    @staticmethod
    def _check_param(node: gs.Node, param: ParamSlice) -> None:
        tensor = next(t for t in node.inputs if t.name == param.initializer)
        size = tensor.values.shape[param.axis]
        if param.positions.size and int(param.positions.max()) >= size:
            raise Blocked(
                f"{node.op} '{node.name}': '{param.initializer}' has {size} entries on axis "
                f"{param.axis}, fewer than the channel map needs"
            )
