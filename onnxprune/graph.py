"""The working IR: an onnx-graphsurgeon Graph plus the tensor shapes we rely on.

onnx-graphsurgeon gives producer/consumer links and numpy-valued constants, which
is what channel analysis and surgery need. Shapes come from ONNX shape inference
(never from guessing); dimensions that stay unknown are `None` or a symbol name.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

# graphsurgeon logs warnings (and a hint about the 'colored' package) on stdout;
# our own report is the one place a user reads.
G_LOGGER.severity = G_LOGGER.ERROR

Dim = int | str | None
Shape = tuple[Dim, ...]


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """Import a model into graphsurgeon's IR, keeping opset and IR version for export."""
    return gs.import_onnx(model)


def export_model(graph: gs.Graph, template: onnx.ModelProto) -> onnx.ModelProto:
    """Export `graph` as a model carrying `template`'s metadata, IR version and opsets."""
    model = gs.export_onnx(graph, do_type_check=False)
    # IR < 4 requires every initializer to be listed as a graph input; normalize takes
    # weights out of the inputs (they are not inputs), which only IR 4 allows.
    model.ir_version = max(template.ir_version, 4)
    del model.opset_import[:]
    model.opset_import.extend(template.opset_import)
    model.producer_name = template.producer_name
    model.producer_version = template.producer_version
    model.domain = template.domain
    model.model_version = template.model_version
    model.doc_string = template.doc_string
    del model.metadata_props[:]
    model.metadata_props.extend(template.metadata_props)
    return model


def real_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs the caller must feed (IR < 4 also lists initializers as inputs)."""
    init_names = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init_names]


def value_shape(info: onnx.ValueInfoProto) -> Shape | None:
    """The shape of a value info, with symbolic dims as their names (None if unnamed)."""
    ttype = info.type.tensor_type
    if not ttype.HasField("shape"):
        return None
    dims: list[Dim] = []
    for d in ttype.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def fix_input_dims(
    model: onnx.ModelProto, overrides: Mapping[str, tuple[int, ...]], default: int | None
) -> onnx.ModelProto:
    """A copy of `model` whose input dims are concrete: overrides first, else `default`.

    `default=None` keeps unknown dims symbolic.
    """
    model = copy.deepcopy(model)
    for inp in real_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if inp.name in overrides:
            wanted = overrides[inp.name]
            del dims[:]
            for v in wanted:
                dims.add().dim_value = int(v)
            continue
        if default is None:
            for i, d in enumerate(dims):
                if d.HasField("dim_value") and d.dim_value <= 0:
                    d.Clear()
                    d.dim_param = f"{inp.name}_dim{i}"
            continue
        for d in dims:
            if not d.HasField("dim_value") or d.dim_value <= 0:  # some exporters write -1
                d.Clear()
                d.dim_value = default
    return model


_SKELETON_MAX = 4096  # initializers with more elements are weights: inference needs no values


def skeleton(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without weight data, for fast shape inference.

    Large initializers become typed graph inputs of the same shape (shape inference
    only needs their shapes); small ones, which may be shape operands that data
    propagation reads, are kept. Copying a 500 MB model would cost seconds.
    """
    light = onnx.ModelProto()
    for field_name in ("ir_version", "producer_name", "producer_version", "domain"):
        setattr(light, field_name, getattr(model, field_name))
    light.ir_version = max(light.ir_version, 4)
    light.opset_import.extend(model.opset_import)
    light.functions.extend(model.functions)
    graph = model.graph
    light.graph.name = graph.name
    light.graph.node.extend(graph.node)
    light.graph.input.extend(graph.input)
    for inp in light.graph.input:  # -1 written as a dim value means unknown, not -1
        for d in inp.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
    light.graph.output.extend(graph.output)
    light.graph.value_info.extend(graph.value_info)
    declared = {i.name for i in graph.input}
    for init in graph.initializer:
        if math.prod(init.dims) <= _SKELETON_MAX or init.data_location == onnx.TensorProto.EXTERNAL:
            light.graph.initializer.append(init)
        elif init.name not in declared:
            light.graph.input.append(
                onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims))
            )
    return light


def infer_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with value_info for every tensor shape inference can determine (in place)."""
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    del model.graph.value_info[:]
    model.graph.value_info.extend(inferred.graph.value_info)
    return model


def infer_shapes(model: onnx.ModelProto) -> dict[str, Shape]:
    """Shapes of every tensor ONNX shape inference can determine (inputs, outputs, values).

    Initializer shapes are included, so a caller can look up any tensor by name.
    """
    inferred = onnx.shape_inference.infer_shapes(skeleton(model), strict_mode=False, data_prop=True)
    shapes: dict[str, Shape] = {}
    for info in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output):
        shape = value_shape(info)
        if shape is not None:
            shapes[info.name] = shape
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def static_dims(shape: Shape | None) -> tuple[int, ...] | None:
    """The shape as ints if every dim is known, else None."""
    if shape is None or any(not isinstance(d, int) for d in shape):
        return None
    return tuple(int(d) for d in shape)


def subgraph_references(graph: gs.Graph) -> set[str]:
    """Names of outer-scope tensors read inside If/Loop/Scan bodies.

    graphsurgeon does not list those reads as consumers, so channel analysis must
    treat such tensors as used by an op it cannot see.
    """
    names: set[str] = set()
    for node in graph.nodes:
        for attr in node.attrs.values():
            bodies = attr if isinstance(attr, list) else [attr]
            for body in bodies:
                if isinstance(body, gs.Graph):
                    for inner in body.nodes:
                        names.update(t.name for t in inner.inputs if t.name)
                    names.update(subgraph_references(body))
    return names


class RuntimeValue(Exception):
    """An operand that analysis needs as a constant is computed at run time."""


def int_operand(node: gs.Node, attr: str, index: int) -> list[int] | None:
    """An integer list given as attribute `attr` (older opsets) or as input `index` (newer).

    None when absent; raises RuntimeValue when the input is not a constant. Covers the
    opset drift of Squeeze/Unsqueeze/Reduce* axes, Split sizes, Slice bounds and Pad pads.
    """
    if attr in node.attrs:
        value = node.attrs[attr]
        return [int(v) for v in (value if isinstance(value, list | tuple) else [value])]
    if index < len(node.inputs) and node.inputs[index].name:
        tensor = node.inputs[index]
        if not isinstance(tensor, gs.Constant):
            raise RuntimeValue(f"input '{tensor.name}' of {node.op} '{node.name}'")
        return [int(v) for v in np.asarray(tensor.values).reshape(-1)]
    return None


def name_nodes(graph: gs.Graph) -> int:
    """Give every unnamed or duplicate-named node a unique name; return how many changed.

    Groups, plans and reports refer to nodes by name, so names must be unique.
    """
    original = [n.name for n in graph.nodes]
    reserved = set(original)
    seen: set[str] = set()
    renamed = 0
    for index, node in enumerate(graph.nodes):
        name = node.name
        if name and name not in seen:
            seen.add(name)
            continue
        base = f"{name or node.op}_{index}"
        name, n = base, 0
        while name in reserved or name in seen:
            n += 1
            name = f"{base}_{n}"
        node.name = name
        seen.add(name)
        renamed += 1
    return renamed
