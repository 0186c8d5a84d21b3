"""Peak activation memory at batch 1: live tensors along the graph's topological order.

A tensor is live from the step of the node that produces it (graph inputs: from the
start) until the step of its last reader (graph outputs: to the end). At each node's
step its inputs and outputs are live together. Weights are not activations. Float
tensors are counted at the profile's value width (an int8 chip keeps int8 activations);
other tensors at their own width. In-place reuse, operator fusion and tiling, which
lower the real peak, are not modelled: this is the footprint of running the graph as
written, one node at a time.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from onnxprune.graph import fix_input_dims, real_inputs, static_dims, value_shape

_FLOAT = {
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
}


@dataclass(frozen=True)
class Activations:
    peak_bytes: int
    peak_node: str | None
    step_bytes: dict[str, int]  # node name -> live bytes while it runs
    tensor_bytes: dict[str, int]  # activation tensor -> bytes (0 when unknown)
    unknown: tuple[str, ...]  # tensors whose shape stayed unknown (counted as 0)


def tensor_types(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, tuple[tuple[int, ...] | None, int]]:
    """name -> (static shape or None, ONNX elem type) at batch 1 / the given input shapes."""
    fixed = fix_input_dims(model, input_shapes or {}, default=1)
    inferred = onnx.shape_inference.infer_shapes(fixed, strict_mode=False, data_prop=True)
    g = inferred.graph
    out: dict[str, tuple[tuple[int, ...] | None, int]] = {}
    for info in (*g.input, *g.value_info, *g.output):
        out[info.name] = (static_dims(value_shape(info)), info.type.tensor_type.elem_type)
    return out


def _nbytes(shape: tuple[int, ...] | None, elem: int, float_bytes: int) -> int | None:
    if shape is None or not elem:
        return None
    width = float_bytes if elem in _FLOAT else helper.tensor_dtype_to_np_dtype(elem).itemsize
    return math.prod(shape) * width


def activation_memory(
    model: onnx.ModelProto,
    types: Mapping[str, tuple[tuple[int, ...] | None, int]],
    float_bytes: int,
    labels: list[str],
) -> Activations:
    """Live bytes at every node step and their peak; `labels` names the nodes in order."""
    g = model.graph
    weights = {i.name for i in g.initializer}
    nodes = list(g.node)
    produced = {o for n in nodes if n.op_type == "Constant" for o in n.output}
    skip = weights | produced | {""}
    last = {t.name: 0 for t in real_inputs(model)}
    for i, node in enumerate(nodes):
        for o in node.output:
            if o not in skip:
                last[o] = i
        for name in node.input:
            if name in last:
                last[name] = i
    for out in g.output:
        last[out.name] = len(nodes)
    sizes: dict[str, int] = {}
    unknown = []
    for name in last:
        size = _nbytes(*types.get(name, (None, 0)), float_bytes)
        if size is None:
            unknown.append(name)
        sizes[name] = size or 0
    dying: dict[int, list[str]] = {}
    for name, step in last.items():
        dying.setdefault(step, []).append(name)
    live = sum(sizes[t.name] for t in real_inputs(model))
    steps: dict[str, int] = {}
    for i, node in enumerate(nodes):
        live += sum(sizes[o] for o in node.output if o not in skip)
        steps[labels[i]] = live
        live -= sum(sizes[t] for t in dying.get(i, ()))
    peak_node = max(steps, key=steps.__getitem__) if steps else None
    peak = steps[peak_node] if peak_node else live
    return Activations(int(peak), peak_node, steps, sizes, tuple(unknown))


def peak_over(acts: Activations, nodes: list[str]) -> tuple[int, str | None]:
    """The largest live footprint while any of `nodes` runs."""
    if not nodes:
        return 0, None
    values = np.array([acts.step_bytes.get(n, 0) for n in nodes])
    k = int(values.argmax())
    return int(values[k]), nodes[k]
