"""Per-channel activation statistics, reduced inside the graph by onnxruntime.

For each prunable group we watch one tensor where its channels are read (the input
of a consuming layer). A copy of the model gets, per watched tensor, ReduceSum nodes
for x, |x|, x² and [x == 0] over every axis but the channel axis, plus its Size;
only these small vectors leave onnxruntime, batch by batch, so memory does not grow
with the number of samples. One augmented session is built and reused.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from onnxprune.depgraph import Group, TensorAxis
from onnxprune.fidelity import session

_KINDS = ("sum", "abs", "sq", "zero")


@dataclass
class ChannelStats:
    """Statistics of one group's channels, each an array of length group.channels."""

    tensor: str
    count: np.ndarray  # elements seen per channel
    mean: np.ndarray
    mean_abs: np.ndarray
    energy: np.ndarray  # mean of x²
    apoz: np.ndarray  # fraction of exact zeros


def watched_tensor(group: Group, consumer_inputs: Mapping[str, str]) -> TensorAxis | None:
    """The group tensor read by a consuming layer, preferring one channel per position."""
    by_name = {t.tensor: t for t in group.tensors}
    candidates = [
        by_name[consumer_inputs[p.node]]
        for p in group.params
        if p.role == "in" and consumer_inputs.get(p.node) in by_name
    ]
    candidates.sort(key=lambda t: t.positions.shape[1])
    return candidates[0] if candidates else None


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def augment(model: onnx.ModelProto, watched: Mapping[str, tuple[int, int]]) -> onnx.ModelProto:
    """Copy of `model` with per-channel reductions of each watched tensor as outputs.

    `watched` maps tensor name -> (channel axis, rank).
    """
    model = copy.deepcopy(model)
    graph = model.graph
    opset = _opset(model)
    zero = "onnxprune_stats_zero"
    graph.initializer.append(helper.make_tensor(zero, TensorProto.FLOAT, [], [0.0]))
    for index, (name, (axis, rank)) in enumerate(sorted(watched.items())):
        axes = [i for i in range(rank) if i != axis]
        prefix = f"onnxprune_stats_{index}"
        sources = {
            "sum": name,
            "abs": _node(graph, "Abs", [name], f"{prefix}_abs_in"),
            "sq": _node(graph, "Mul", [name, name], f"{prefix}_sq_in"),
            "zero": _node(
                graph,
                "Cast",
                [_node(graph, "Equal", [name, zero], f"{prefix}_eq")],
                f"{prefix}_zero_in",
                to=TensorProto.FLOAT,
            ),
        }
        for kind, source in sources.items():
            out = f"{prefix}_{kind}"
            if opset >= 13:
                axes_name = f"{prefix}_axes"
                if kind == "sum":
                    graph.initializer.append(
                        helper.make_tensor(axes_name, TensorProto.INT64, [len(axes)], axes)
                    )
                graph.node.append(
                    helper.make_node("ReduceSum", [source, axes_name], [out], keepdims=0, name=out)
                )
            else:
                graph.node.append(
                    helper.make_node("ReduceSum", [source], [out], axes=axes, keepdims=0, name=out)
                )
            graph.output.append(helper.make_tensor_value_info(out, TensorProto.FLOAT, None))
        size = _node(graph, "Size", [name], f"{prefix}_size")
        graph.output.append(helper.make_tensor_value_info(size, TensorProto.INT64, None))
    return model


def _node(graph: onnx.GraphProto, op: str, inputs: list[str], out: str, **attrs) -> str:
    graph.node.append(helper.make_node(op, inputs, [out], name=out, **attrs))
    return out


def collect(
    model: onnx.ModelProto,
    groups: Iterable[Group],
    consumer_inputs: Mapping[str, str],
    shapes: Mapping[str, tuple],
    batches: Iterable[dict[str, np.ndarray]],
) -> dict[int, ChannelStats]:
    """Run the augmented model over `batches` and reduce per group channel."""
    watched: dict[int, TensorAxis] = {}
    for group in groups:
        tensor = watched_tensor(group, consumer_inputs)
        if tensor is not None and tensor.tensor in shapes:
            watched[group.id] = tensor
    if not watched:
        return {}
    spec = {t.tensor: (t.axis, len(shapes[t.tensor])) for t in watched.values()}
    order = sorted(spec)
    sess = session(augment(model, spec), probe=True)
    fetch = [f"onnxprune_stats_{i}_{k}" for i in range(len(order)) for k in (*_KINDS, "size")]
    totals = {name: {k: 0.0 for k in (*_KINDS, "count")} for name in order}
    for feeds in batches:
        values = dict(zip(fetch, sess.run(fetch, feeds), strict=True))
        for i, name in enumerate(order):
            acc = totals[name]
            for kind in _KINDS:
                acc[kind] = acc[kind] + values[f"onnxprune_stats_{i}_{kind}"].astype(np.float64)
            axis_length = values[f"onnxprune_stats_{i}_sum"].shape[0]
            acc["count"] += int(values[f"onnxprune_stats_{i}_size"]) // axis_length
    result: dict[int, ChannelStats] = {}
    for gid, tensor in watched.items():
        acc = totals[tensor.tensor]
        pos = tensor.positions
        channel = {k: np.asarray(acc[k])[pos].sum(axis=1) for k in _KINDS}
        count = np.full(pos.shape[0], acc["count"] * pos.shape[1], dtype=np.float64)
        result[gid] = ChannelStats(
            tensor=tensor.tensor,
            count=count,
            mean=channel["sum"] / count,
            mean_abs=channel["abs"] / count,
            energy=channel["sq"] / count,
            apoz=channel["zero"] / count,
        )
    return result
