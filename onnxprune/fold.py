"""Normalization: turn every weight the exporter hid behind an op into a constant.

Exporters store weights in Constant nodes, behind Identity or Cast, or compute
them with ConstantOfShape; channel analysis needs them as plain constants whose
values it can slice. Only these constant-producing patterns are folded — nothing
that would change what the model computes.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper


def fold_constant_producers(graph: gs.Graph) -> int:
    """Replace constant-producing nodes by constants in place; return how many were folded."""
    outputs = {t.name for t in graph.outputs}
    folded = 0
    for node in list(graph.nodes):
        value = _constant_value(node)
        if value is None:
            continue
        result = node.outputs[0]
        if result.name in outputs:
            continue  # a constant graph output stays a node, so the signature holds
        constant = gs.Constant(result.name, np.ascontiguousarray(value))
        for consumer in list(result.outputs):
            for i, tensor in enumerate(consumer.inputs):
                if tensor is result:
                    consumer.inputs[i] = constant
        node.outputs.clear()
        folded += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return folded


def _constant_value(node: gs.Node) -> np.ndarray | None:
    if node.op == "Constant" and not node.inputs:
        return _constant_node_value(node)
    if not node.inputs or not all(isinstance(t, gs.Constant) for t in node.inputs if t.name):
        return None
    if node.op == "Identity":
        return np.asarray(node.inputs[0].values)
    if node.op == "Cast":
        to = helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
        return np.asarray(node.inputs[0].values).astype(to)
    if node.op == "ConstantOfShape":
        shape = [int(d) for d in np.asarray(node.inputs[0].values).reshape(-1)]
        fill = node.attrs.get("value")
        fill_array = np.asarray(fill.values) if fill is not None else np.zeros(1, np.float32)
        return np.full(shape, fill_array.reshape(-1)[0], dtype=fill_array.dtype)
    return None


def _constant_node_value(node: gs.Node) -> np.ndarray | None:
    attrs = node.attrs
    if "value" in attrs:
        value = attrs["value"]
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        if isinstance(value, onnx.TensorProto):
            return numpy_helper.to_array(value)
        return None
    if "value_float" in attrs:
        return np.array(attrs["value_float"], dtype=np.float32)
    if "value_floats" in attrs:
        return np.array(attrs["value_floats"], dtype=np.float32)
    if "value_int" in attrs:
        return np.array(attrs["value_int"], dtype=np.int64)
    if "value_ints" in attrs:
        return np.array(attrs["value_ints"], dtype=np.int64)
    return None  # sparse_value / strings: left as a node
