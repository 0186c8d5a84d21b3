"""Dependency groups: every tensor axis and parameter slice coupled to a set of channels.

Starting from each node that creates channels (`oprules.ROOTS`), a breadth-first
walk applies the op rules in both directions — to the tensor's producer and to all
its consumers — until the closure is complete. Whatever the walk meets that no rule
can map (unknown ops, graph outputs, shared weights, inconsistent maps) blocks the
whole group, and the group keeps the reason so the report can say it.

Some maps only exist for another choice of rows: a grouped convolution needs a
channel in every group removed together (rows merge into units), a Split sends
some rows one way and some another (rows separate into groups). The rule says so
(`indexmap.Regroup`) and the walk restarts from the root with the new rows. Each
restart makes the rows strictly coarser or the group strictly smaller, so it ends.
A group may own only part of a tensor's axis (the channels of one Concat input);
the positions arrays say which part.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import Shape, subgraph_references
from onnxprune.indexmap import Regroup, canonical
from onnxprune.oprules import ROOTS, RULES, Blocked, Coupling, Fix, ParamSlice, Visit

log = logging.getLogger("onnxprune")
ANALYSIS_FAILED = "could not be analysed (internal error in its rule)"


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
    fixes: list[Fix] = field(default_factory=list)
    blocked: str | None = None
    blocked_node: str | None = None

    @property
    def prunable(self) -> bool:
        return self.blocked is None

    def block(self, reason: str, node: str | None) -> None:
        if self.blocked is None:
            self.blocked, self.blocked_node = reason, node

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
    claimed = _Claims(shapes)
    for node in graph.nodes:
        root_rule = ROOTS.get(node.op)
        if root_rule is None:
            continue
        found = root_rule(node, shapes)
        if found is None:
            continue
        axis, units = found
        pending: list[tuple[np.ndarray, Regroup | None]] = [
            (claimed.unclaimed(node.outputs[0].name, axis, units), None)
        ]
        while pending:
            rows, why = pending.pop(0)
            if rows.shape[0] < 2:
                if why is not None and why.mode == "merge":  # say why nothing is left
                    group = Group(len(groups), int(rows.shape[0]), [node.name])
                    group.block(f"{why}; the only unit left is all channels together", why.node)
                    groups.append(group)
                continue  # one channel cannot be pruned and stay a layer
            outcome = builder.build(len(groups), node, axis, rows)
            if isinstance(outcome, tuple):
                request, regrouped = outcome
                pending[:0] = [(r, request) for r in regrouped]
                continue
            claimed.claim(outcome, groups)
            groups.append(outcome)
    return groups


class _Claims:
    """Which positions of which tensor axis already belong to a group.

    A root whose output channels were reached by an earlier group starts only from
    the rest; a group that reaches positions another group owns blocks both (two
    groups deciding about one channel could disagree).
    """

    def __init__(self, shapes: Mapping[str, Shape]) -> None:
        self.shapes = shapes
        self.owner: dict[tuple[str, int], np.ndarray] = {}

    def _owners(self, tensor: str, axis: int) -> np.ndarray | None:
        key = (tensor, axis)
        if key not in self.owner:
            shape = self.shapes.get(tensor)
            if shape is None or axis >= len(shape) or not isinstance(shape[axis], int):
                return None
            self.owner[key] = np.full(int(shape[axis]), -1, dtype=np.int64)
        return self.owner[key]

    def unclaimed(self, tensor: str, axis: int, units: np.ndarray) -> np.ndarray:
        owners = self._owners(tensor, axis)
        if owners is None:
            return units
        return units[(owners[units] < 0).all(axis=1)]

    def claim(self, group: Group, groups: list[Group]) -> None:
        for t in group.tensors:
            owners = self._owners(t.tensor, t.axis)
            if owners is None or not t.positions.size or int(t.positions.max()) >= owners.size:
                continue
            taken = owners[t.positions]
            others = np.unique(taken[(taken >= 0) & (taken != group.id)])
            for gid in others:
                why = f"channels of tensor '{t.tensor}' are also reached by group"
                group.block(f"{why} {gid}", None)
                groups[int(gid)].block(f"{why} {group.id}", None)
            owners[t.positions] = group.id


class _GroupBuilder:
    def __init__(self, graph: gs.Graph, shapes: Mapping[str, Shape]) -> None:
        self.shapes = shapes
        self.opset = int(graph.opset or 17)
        self.graph_inputs = {t.name for t in graph.inputs}
        self.graph_outputs = {t.name for t in graph.outputs}
        self.hidden_reads = subgraph_references(graph)
        self.consumers_of: dict[str, int] = {
            name: len(t.outputs) for name, t in graph.tensors().items()
        }

    def build(
        self, gid: int, root: gs.Node, axis: int, rows: np.ndarray
    ) -> Group | tuple[Regroup, list[np.ndarray]]:
        """Walk the closure of `rows` (root positions [C, k]); or say how to regroup them."""
        group = Group(id=gid, channels=int(rows.shape[0]), roots=[root.name])
        seen: dict[str, TensorAxis] = {}
        params: dict[tuple[str, str, int], ParamSlice] = {}
        fixes: dict[tuple, Fix] = {}
        done_visits: dict[tuple[str, str, int], np.ndarray] = {}
        queue: deque[tuple[gs.Variable, int, np.ndarray]] = deque(
            [(root.outputs[0], axis, canonical(rows))]
        )
        while queue:
            tensor, t_axis, positions = queue.popleft()
            previous = seen.get(tensor.name)
            if previous is not None:
                if previous.axis == t_axis and np.array_equal(previous.positions, positions):
                    continue
                grown = _union(previous, t_axis, positions)
                if grown is None:
                    group.block(
                        f"tensor '{tensor.name}' is reached with two different channel maps", None
                    )
                    continue
                # The same channels sit at more places of this tensor (a Concat of two
                # tensors of the group): the group owns both, and its neighbours hear so.
                previous.positions = positions = grown
            else:
                seen[tensor.name] = TensorAxis(tensor.name, t_axis, positions)
                group.tensors.append(seen[tensor.name])
                for reason in self._tensor_blockers(tensor):
                    group.block(reason, None)
            visits = [(p, "out", p.outputs.index(tensor)) for p in tensor.inputs]
            for consumer in tensor.outputs:
                visits += [
                    (consumer, "in", i) for i, t in enumerate(consumer.inputs) if t is tensor
                ]
            for node, side, index in visits:
                key = (node.name, side, index)
                if key in done_visits and np.array_equal(done_visits[key], positions):
                    continue
                done_visits[key] = positions
                try:
                    coupling = self._apply(node, side, index, t_axis, positions)
                except Blocked as exc:
                    group.block(str(exc), node.name)
                    continue
                except (ValueError, IndexError, KeyError, TypeError) as exc:
                    # A rule bug must not cost the user the whole run: this group stays.
                    log.debug("rule for %s '%s' failed", node.op, node.name, exc_info=True)
                    group.block(f"{node.op} '{node.name}' {ANALYSIS_FAILED} ({exc!r})", node.name)
                    continue
                except Regroup as exc:
                    exc.node = node.name
                    exc.args = (f"{node.op} '{node.name}': {exc.reason}",)
                    regrouped = _regroup(seen[root.outputs[0].name].positions, exc)
                    if regrouped is None:
                        group.block(str(exc), node.name)
                        continue
                    return exc, regrouped
                if coupling.produces and node.name not in group.roots:
                    group.roots.append(node.name)
                for param in coupling.params:
                    pkey = (param.initializer, param.node, param.axis)
                    if pkey not in params and self.consumers_of.get(param.initializer, 0) > 1:
                        group.block(
                            f"weight '{param.initializer}' is shared by several nodes", param.node
                        )
                    param.positions = canonical(param.positions)
                    params[pkey] = param  # a later visit with grown positions supersedes
                for fix in coupling.fixes:
                    fixes.setdefault(fix.key(), fix)
                for link in coupling.links:
                    queue.append((link.tensor, link.axis, canonical(link.positions)))
        group.params = list(params.values())
        group.fixes = list(fixes.values())
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
        visit = Visit(node, side, index, axis, positions, self.shapes, self.opset)
        coupling = rule(visit)
        for param in coupling.params:
            self._check_param(node, param)
        return coupling

    @staticmethod
    def _check_param(node: gs.Node, param: ParamSlice) -> None:
        tensor = next(t for t in node.inputs if t.name == param.initializer)
        size = tensor.shape[param.axis]
        if param.positions.size and int(param.positions.max()) >= size:
            raise Blocked(
                f"{node.op} '{node.name}': '{param.initializer}' has {size} entries on axis "
                f"{param.axis}, fewer than the channel map needs"
            )


def _union(previous: TensorAxis, axis: int, positions: np.ndarray) -> np.ndarray | None:
    """Each row's positions joined with `positions`; None unless rows stay disjoint and even."""
    if previous.axis != axis or previous.positions.shape[0] != positions.shape[0]:
        return None
    joined = np.sort(np.concatenate([previous.positions, positions], axis=1), axis=1)
    fresh = np.ones(joined.shape, dtype=bool)
    fresh[:, 1:] = joined[:, 1:] != joined[:, :-1]
    counts = fresh.sum(axis=1)
    if (counts != counts[0]).any():
        return None
    grown = joined[fresh].reshape(joined.shape[0], int(counts[0]))
    if np.unique(grown).size != grown.size:
        return None  # two channels would share a position
    return grown


def _regroup(rows: np.ndarray, request: Regroup) -> list[np.ndarray] | None:
    """New root rows that satisfy `request`, as one or more groups; None if nothing changes.

    Merged units of unequal size cannot share a positions array, so they become
    separate groups (a group's rows are independent choices, so that is always sound).
    """
    labels = request.labels
    order = list(dict.fromkeys(labels.tolist()))  # labels in order of first row
    if len(order) == 1 and request.mode == "split":
        return None
    if len(order) == len(labels) and request.mode == "merge":
        return None
    if request.mode == "split":
        return [rows[labels == label] for label in order]
    units = [canonical(rows[labels == label].reshape(1, -1))[0] for label in order]
    by_size: dict[int, list[np.ndarray]] = {}
    for unit in units:
        by_size.setdefault(unit.size, []).append(unit)
    return [np.stack(same) for same in by_size.values()]
