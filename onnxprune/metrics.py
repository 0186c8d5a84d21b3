"""Model costs computed from the graph itself: parameters, MACs, op counts.

MACs come from shapes inferred with every dynamic input dim set to 1 (batch 1) or
to the user's --input-shape, and count the multiply-accumulates of Conv,
ConvTranspose, Gemm and MatMul — the layers pruning changes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping

import onnx

from onnxprune.graph import fix_input_dims, infer_shapes, static_dims

MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point initializers and Constant-node tensors (the weights)."""
    total = 0
    for init in model.graph.initializer:
        if _is_float(init.data_type):
            total += math.prod(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and _is_float(attr.t.data_type):
                    total += math.prod(attr.t.dims)
    return int(total)


def _is_float(data_type: int) -> bool:
    return data_type in (
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.BFLOAT16,
        onnx.TensorProto.DOUBLE,
    )


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


def node_macs(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, int]:
    """MACs per Conv/ConvTranspose/Gemm/MatMul node (by node name) at batch 1."""
    fixed = fix_input_dims(model, input_shapes or {}, default=1)
    shapes = infer_shapes(fixed)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(init.dims)
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(attr.t.dims)
    result: dict[str, int] = {}
    for index, node in enumerate(model.graph.node):
        if node.op_type not in MAC_OPS:
            continue
        name = node.name or f"{node.op_type}_{index}"
        result[name] = _macs(node, shapes)
    return result


def _macs(node: onnx.NodeProto, shapes: Mapping) -> int:
    def dims(name: str) -> tuple[int, ...] | None:
        return static_dims(shapes.get(name))

    out = dims(node.output[0])
    if node.op_type == "Conv":
        weight = dims(node.input[1])
        if out is None or weight is None:
            return 0
        return math.prod(out) * math.prod(weight[1:])
    if node.op_type == "ConvTranspose":
        data, weight = dims(node.input[0]), dims(node.input[1])
        if data is None or weight is None:
            return 0
        return math.prod(data) * math.prod(weight[1:])
    if node.op_type == "Gemm":
        a = dims(node.input[0])
        if out is None or a is None:
            return 0
        trans_a = next((at.i for at in node.attribute if at.name == "transA"), 0)
        k = a[0] if trans_a else a[1]
        return math.prod(out) * k
    if node.op_type == "MatMul":
        a = dims(node.input[0])
        if out is None or a is None:
            return 0
        return math.prod(out) * a[-1]
    return 0
