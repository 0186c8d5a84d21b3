"""The layers an accelerator holds weights for: MAC nodes and their constant weight tensors.

A weight is the constant operand of a Conv/ConvTranspose (input 1), Gemm (B) or MatMul
(whichever input is an initializer). A weight read by several nodes is one layer (stored
once) whose MACs are those of all its nodes. MAC nodes without a constant operand
(activation x activation products) still cost MACs and move activations, but hold no
weights; they are listed separately.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.errors import UsageError
from onnxprune.metrics import MAC_OPS

_FLOAT = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.BFLOAT16,
    onnx.TensorProto.DOUBLE,
)


@dataclass(frozen=True)
class MacNode:
    """One MAC node in graph order; `weight` is None for activation x activation ops."""

    name: str
    op: str
    index: int
    weight: str | None
    kind: str | None  # the sparse.to_matrix orientation of the weight
    data_inputs: tuple[str, ...]  # activation operands (read from memory once)
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class WeightLayer:
    """A constant weight tensor and the MAC nodes that read it."""

    weight: str
    kind: str
    nodes: tuple[str, ...]
    op: str

    @property
    def node(self) -> str:
        return self.nodes[0]


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or the label `metrics.node_macs` gives an unnamed node."""
    return node.name or f"{node.op_type}_{index}"


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def mac_nodes(model: onnx.ModelProto) -> list[MacNode]:
    """Every Conv/ConvTranspose/Gemm/MatMul node, with its constant weight if it has one."""
    floats = {i.name: i for i in model.graph.initializer if i.data_type in _FLOAT}
    result = []
    for index, node in enumerate(model.graph.node):
        if node.op_type not in MAC_OPS:
            continue
        inputs = list(node.input)
        weight, kind = None, None
        if node.op_type in ("Conv", "ConvTranspose") and len(inputs) > 1:
            weight, kind = inputs[1], "conv"
        elif node.op_type == "Gemm" and len(inputs) > 1:
            weight, kind = inputs[1], ("fc" if _attr(node, "transB", 0) else "fc_t")
        elif node.op_type == "MatMul" and len(inputs) > 1:
            if inputs[1] in floats:
                weight, kind = inputs[1], "fc_t"
            elif inputs[0] in floats and len(floats[inputs[0]].dims) == 2:
                weight, kind = inputs[0], "fc"  # W @ x: rows of W are the outputs
        if weight not in floats:
            weight, kind = None, None
        if node.op_type == "Gemm":
            operands = [inputs[0]] + ([] if weight else inputs[1:2])
        elif weight:
            operands = [n for n in inputs[:2] if n != weight]
        else:
            operands = inputs[:2]
        data = tuple(n for n in operands if n and n not in floats)
        result.append(
            MacNode(node_label(node, index), node.op_type, index, weight, kind, data,
                    tuple(o for o in node.output if o))
        )  # fmt: skip
    return result


def weight_layers(nodes: Sequence[MacNode]) -> list[WeightLayer]:
    """One layer per distinct weight, in the graph order of its first reader."""
    by_weight: dict[str, list[MacNode]] = {}
    for n in nodes:
        if n.weight is not None:
            by_weight.setdefault(n.weight, []).append(n)
    return [
        WeightLayer(w, readers[0].kind or "conv", tuple(r.name for r in readers), readers[0].op)
        for w, readers in by_weight.items()
    ]


def select(nodes: list[MacNode], patterns: Sequence[str]) -> list[MacNode]:
    """MAC nodes whose name or weight name matches a GLOB (all of them without patterns)."""
    if not patterns:
        return nodes
    chosen = [
        n
        for n in nodes
        if any(fnmatch.fnmatchcase(n.name, p) or (n.weight and fnmatch.fnmatchcase(n.weight, p))
               for p in patterns)
    ]  # fmt: skip
    if not chosen:
        raise UsageError(
            f"--layers {list(patterns)} matches no Conv/ConvTranspose/Gemm/MatMul node or "
            "weight name; `onnxprune analyze MODEL` lists the node names"
        )
    return chosen


def weight_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    init = next(i for i in model.graph.initializer if i.name == name)
    return numpy_helper.to_array(init)


def float_params(model: onnx.ModelProto) -> tuple[int, int]:
    """(elements, non-zeros) of the floating-point initializers and Constant tensors."""
    total = nonzero = 0
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            tensors += [a.t for a in node.attribute if a.name == "value"]
    for t in tensors:
        if t.data_type in _FLOAT:
            array = numpy_helper.to_array(t)
            total += int(array.size)
            nonzero += int(np.count_nonzero(array))
    return total, nonzero


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with large float initializers turned into typed inputs (no weight bytes).

    Shape inference and MAC counting need weight shapes, not weight values; copying a
    large model's weights for them would cost seconds and memory.
    """
    light = onnx.ModelProto()
    light.ir_version = max(model.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    g, src = light.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.output.extend(src.output)
    g.value_info.extend(src.value_info)
    listed = {i.name for i in src.input}
    g.input.extend(src.input)
    for init in src.initializer:
        big = init.data_type in _FLOAT and int(np.prod(init.dims, dtype=np.int64)) > 4096
        if not big:
            g.initializer.append(init)
        elif init.name not in listed:
            g.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return light
