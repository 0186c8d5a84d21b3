"""Normalization: turn every value the exporter computes from constants into a constant.

Exporters store weights in Constant nodes, behind Identity/Cast/Unsqueeze/Reshape, or
compute them with ConstantOfShape; they spell reshape targets as Shape→Gather→Concat
arithmetic. Channel analysis needs all of these as plain constants it can slice or
rewrite. `fold_constants` evaluates a whitelist of ops with numpy, exactly as ONNX
defines them, and folds Shape only where the dimensions are static in the model
itself: a symbolic (dynamic) dimension is never turned into a literal. Folding
preserves what the model computes; a folded literal that spells a channel count is
rewritten (or blocks its group) by the op rule that consumes it.

`shape_elements` traces what is left dynamic: the entries of a run-time shape vector.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper

from onnxprune.graph import RuntimeValue, Shape, int_operand

Array = np.ndarray
Evaluator = Callable[[gs.Node, list[Array]], list[Array]]

# Ops whose whole point is to materialise a (possibly large) constant: always folded.
_PRODUCERS = {"Constant", "ConstantOfShape", "Identity", "Cast", "Unsqueeze", "Squeeze"}
_PRODUCERS |= {"Reshape", "Transpose", "Flatten"}
_MAX_EXPANSION = 1 << 16  # other ops may not blow a constant up beyond this many elements


@dataclass
class _Partial:
    """A small integer vector (a shape) with some entries known: values + known mask."""

    values: Array
    known: Array

    @property
    def complete(self) -> bool:
        return bool(self.known.all())


def fold_constants(graph: gs.Graph, shapes: Mapping[str, Shape] | None = None) -> int:
    """Replace every foldable node's outputs by constants, in place; return how many folded.

    With `shapes`, Shape of a tensor folds into the entries that are static there, and
    arithmetic on those entries folds as far as it is known.
    """
    graph.toposort()
    outputs = {t.name for t in graph.outputs}
    partial: dict[str, _Partial] = {}
    folded = 0
    for node in list(graph.nodes):
        if node.domain not in (None, "", "ai.onnx") or not node.outputs:
            continue
        try:
            values = _evaluate(node, partial, shapes)
        except (RuntimeValue, ValueError, IndexError, KeyError, TypeError):
            values = None  # not foldable after all: leave the node to run
        if values is None:
            continue
        if any(isinstance(v, _Partial) for v in values) or any(
            t.name in outputs for t in node.outputs
        ):
            for tensor, value in zip(node.outputs, values, strict=False):
                if isinstance(value, _Partial):
                    partial[tensor.name] = value
            continue
        for tensor, value in zip(node.outputs, values, strict=True):
            _replace(tensor, gs.Constant(tensor.name, np.asarray(value, order="C")))  # keeps 0-D
        node.outputs.clear()
        folded += 1
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return folded


def fold_constant_producers(graph: gs.Graph) -> int:
    """Fold constants without shape knowledge (kept for callers of the first version)."""
    return fold_constants(graph, None)


def _replace(tensor: gs.Variable, constant: gs.Constant) -> None:
    for consumer in list(tensor.outputs):
        for i, t in enumerate(consumer.inputs):
            if t is tensor:
                consumer.inputs[i] = constant


def _evaluate(
    node: gs.Node, partial: Mapping[str, _Partial], shapes: Mapping[str, Shape] | None
) -> list[Array | _Partial] | None:
    inputs = list(node.inputs)
    if node.op == "Constant" and not inputs:
        value = _constant_node_value(node)
        return None if value is None else [value]
    if node.op == "Shape" and shapes is not None and isinstance(inputs[0], gs.Variable):
        return _shape_of(node, shapes.get(inputs[0].name))
    evaluator = _EVAL.get(node.op)
    if evaluator is None:
        return None
    consts = [
        np.asarray(t.values) if isinstance(t, gs.Constant) else None for t in inputs if t.name
    ]
    present = [t for t in inputs if t.name]
    if all(c is not None for c in consts):
        result = evaluator(node, _with_empty(inputs, consts))
        largest = max((c.size for c in consts), default=1)
        if node.op not in _PRODUCERS and any(
            r.size > max(_MAX_EXPANSION, 2 * largest) for r in result
        ):
            return None
        return result
    if node.op not in _PARTIAL_DATA:
        return None
    # Shape arithmetic with some entries unknown: evaluate values and known-mask alike.
    parts = [
        partial.get(t.name) if c is None else None for t, c in zip(present, consts, strict=True)
    ]
    if any(c is None and p is None for c, p in zip(consts, parts, strict=True)):
        return None
    data = _PARTIAL_DATA[node.op]
    if any(p is not None and (data is not None and i not in data) for i, p in enumerate(parts)):
        return None  # an index/axes operand is itself unknown
    values = [p.values if p is not None else c for p, c in zip(parts, consts, strict=True)]
    result = evaluator(node, _with_empty(inputs, values))[0]
    if node.op in _ARITHMETIC or node.op == "Cast":
        known = np.ones(result.shape, dtype=bool)
        for p in parts:
            if p is not None:
                known &= np.broadcast_to(p.known, result.shape)
    else:
        masks = [
            p.known if p is not None else (np.ones(c.shape, dtype=bool) if _is_data(data, i) else c)
            for i, (p, c) in enumerate(zip(parts, consts, strict=True))
        ]
        known = evaluator(node, _with_empty(inputs, masks))[0].astype(bool)
    return [np.asarray(result) if known.all() else _Partial(np.asarray(result), known)]


def _is_data(data: tuple[int, ...] | None, index: int) -> bool:
    return data is None or index in data


def _with_empty(inputs: Sequence[gs.Tensor], values: Sequence[Array]) -> list[Array | None]:
    """Re-insert None for omitted optional inputs so evaluators can index by position."""
    it = iter(values)
    return [next(it) if t.name else None for t in inputs]


def _shape_of(node: gs.Node, shape: Shape | None) -> list[Array | _Partial] | None:
    if shape is None:
        return None
    rank = len(shape)
    start = int(node.attrs.get("start", 0))
    end = int(node.attrs.get("end", rank))
    dims = list(shape)[slice(start, end)]
    values = np.array([d if isinstance(d, int) and d >= 0 else 1 for d in dims], dtype=np.int64)
    known = np.array([isinstance(d, int) and d >= 0 for d in dims], dtype=bool)
    part = _Partial(values, known)
    return [values if part.complete else part]


def _constant_node_value(node: gs.Node) -> Array | None:
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


# --- numpy evaluators (ONNX semantics) ------------------------------------------


def _axes(node: gs.Node, x: list[Array | None], index: int) -> list[int] | None:
    if "axes" in node.attrs:
        return [int(a) for a in node.attrs["axes"]]
    if index < len(x) and x[index] is not None:
        return [int(a) for a in np.asarray(x[index]).reshape(-1)]
    return None


def _cast(node: gs.Node, x: list) -> list[Array]:
    to = helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    if to == np.dtype(object):
        raise TypeError("string cast")
    return [np.asarray(x[0]).astype(to)]


def _constant_of_shape(node: gs.Node, x: list) -> list[Array]:
    shape = [int(d) for d in np.asarray(x[0]).reshape(-1)]
    fill = node.attrs.get("value")
    fill_array = np.asarray(fill.values) if fill is not None else np.zeros(1, np.float32)
    return [np.full(shape, fill_array.reshape(-1)[0], dtype=fill_array.dtype)]


def _unsqueeze(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    axes = _axes(node, x, 1) or []
    rank = data.ndim + len(axes)
    out = data
    for a in sorted(a + rank if a < 0 else a for a in axes):
        out = np.expand_dims(out, a)
    return [out]


def _squeeze(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    axes = _axes(node, x, 1)
    if axes is None:
        return [np.squeeze(data)]
    return [np.squeeze(data, axis=tuple(a + data.ndim if a < 0 else a for a in axes))]


def _reshape(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    target = [int(d) for d in np.asarray(x[1]).reshape(-1)]
    if not int(node.attrs.get("allowzero", 0)):
        target = [data.shape[i] if d == 0 else d for i, d in enumerate(target)]
    return [data.reshape(target)]


def _flatten(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    axis = int(node.attrs.get("axis", 1))
    axis = axis + data.ndim if axis < 0 else axis
    head = int(np.prod(data.shape[:axis], dtype=np.int64))
    return [data.reshape(head, -1)]


def _concat(node: gs.Node, x: list) -> list[Array]:
    return [
        np.concatenate([np.asarray(v) for v in x if v is not None], axis=int(node.attrs["axis"]))
    ]


def _gather(node: gs.Node, x: list) -> list[Array]:
    return [np.take(np.asarray(x[0]), np.asarray(x[1]), axis=int(node.attrs.get("axis", 0)))]


def slice_bounds(dim: int, start: int, end: int, step: int) -> slice:
    """ONNX Slice clamping for one axis, as a Python slice over range(dim)."""
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        return slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
    start = min(max(start, 0), dim - 1)
    end = min(max(end, -1), dim - 1)
    return slice(start, None if end < 0 else end, step)


def _slice(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    starts = int_operand_list(node, x, "starts", 1)
    ends = int_operand_list(node, x, "ends", 2)
    axes = int_operand_list(node, x, "axes", 3) or list(range(len(starts)))
    steps = int_operand_list(node, x, "steps", 4) or [1] * len(starts)
    index = [slice(None)] * data.ndim
    for s, e, a, st in zip(starts, ends, axes, steps, strict=True):
        a = a + data.ndim if a < 0 else a
        index[a] = slice_bounds(data.shape[a], s, e, st)
    return [data[tuple(index)]]


def int_operand_list(node: gs.Node, x: list, attr: str, index: int) -> list[int] | None:
    if attr in node.attrs:
        return [int(v) for v in node.attrs[attr]]
    if index < len(x) and x[index] is not None:
        return [int(v) for v in np.asarray(x[index]).reshape(-1)]
    return None


def _div(node: gs.Node, x: list) -> list[Array]:
    a, b = np.asarray(x[0]), np.asarray(x[1])
    if np.issubdtype(a.dtype, np.integer):
        quotient = np.abs(a) // np.abs(b) * np.sign(a) * np.sign(b)  # truncation, like C
        return [quotient.astype(a.dtype)]
    return [np.divide(a, b).astype(a.dtype)]


def _binary(fn: Callable[[Array, Array], Array]) -> Evaluator:
    def run(node: gs.Node, x: list) -> list[Array]:
        a, b = np.asarray(x[0]), np.asarray(x[1])
        return [np.asarray(fn(a, b)).astype(np.result_type(a, b), copy=False)]

    return run


def _compare(fn: Callable[[Array, Array], Array]) -> Evaluator:
    return lambda node, x: [np.asarray(fn(np.asarray(x[0]), np.asarray(x[1])))]


def _unary(fn: Callable[[Array], Array]) -> Evaluator:
    return lambda node, x: [np.asarray(fn(np.asarray(x[0]))).astype(np.asarray(x[0]).dtype)]


def _nary(fn: Callable[[Array, Array], Array]) -> Evaluator:
    def run(node: gs.Node, x: list) -> list[Array]:
        arrays = [np.asarray(v) for v in x if v is not None]
        out = arrays[0]
        for other in arrays[1:]:
            out = fn(out, other)
        return [np.asarray(out).astype(arrays[0].dtype)]

    return run


def _shape_const(node: gs.Node, x: list) -> list[Array]:
    shape = np.asarray(x[0]).shape
    start = int(node.attrs.get("start", 0))
    end = int(node.attrs.get("end", len(shape)))
    return [np.array(shape[slice(start, end)], dtype=np.int64)]


def _range(node: gs.Node, x: list) -> list[Array]:
    start, limit, delta = (np.asarray(v).reshape(()) for v in x[:3])
    return [np.arange(start, limit, delta, dtype=start.dtype)]


def _expand(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    shape = np.broadcast_shapes(data.shape, tuple(int(d) for d in np.asarray(x[1]).reshape(-1)))
    return [np.broadcast_to(data, shape).copy()]


def _tile(node: gs.Node, x: list) -> list[Array]:
    return [np.tile(np.asarray(x[0]), [int(r) for r in np.asarray(x[1]).reshape(-1)])]


def _where(node: gs.Node, x: list) -> list[Array]:
    return [np.where(np.asarray(x[0]), np.asarray(x[1]), np.asarray(x[2]))]


def _transpose(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    perm = node.attrs.get("perm")
    return [np.transpose(data, None if perm is None else [int(p) for p in perm])]


def _split(node: gs.Node, x: list) -> list[Array]:
    data = np.asarray(x[0])
    axis = int(node.attrs.get("axis", 0))
    axis = axis + data.ndim if axis < 0 else axis
    sizes = int_operand_list(node, x, "split", 1)
    if sizes is None:
        n = len(node.outputs)
        size = -(-data.shape[axis] // n)
        sizes = [min(size, data.shape[axis] - i * size) for i in range(n)]
    return list(np.split(data, np.cumsum(sizes)[:-1], axis=axis))


_ARITHMETIC = {"Add", "Sub", "Mul", "Div"}

_EVAL: dict[str, Evaluator] = {
    "Identity": lambda node, x: [np.asarray(x[0])],
    "Cast": _cast,
    "ConstantOfShape": _constant_of_shape,
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Concat": _concat,
    "Gather": _gather,
    "Slice": _slice,
    "Transpose": _transpose,
    "Split": _split,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Div": _div,
    "Neg": _unary(np.negative),
    "Abs": _unary(np.abs),
    "Sqrt": _unary(np.sqrt),
    "Reciprocal": _unary(np.reciprocal),
    "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil),
    "Min": _nary(np.minimum),
    "Max": _nary(np.maximum),
    "Equal": _compare(np.equal),
    "Less": _compare(np.less),
    "Greater": _compare(np.greater),
    "Not": lambda node, x: [np.logical_not(np.asarray(x[0]))],
    "Where": _where,
    "Shape": _shape_const,
    "Size": lambda node, x: [np.array(np.asarray(x[0]).size, dtype=np.int64)],
    "Range": _range,
    "Expand": _expand,
    "Tile": _tile,
}

# Ops folded with some entries unknown, and which inputs carry the (partial) data;
# None = all inputs. The other inputs (indices, axes, bounds) must be constants.
_PARTIAL_DATA: dict[str, tuple[int, ...] | None] = {
    "Identity": (0,),
    "Cast": (0,),
    "Unsqueeze": (0,),
    "Squeeze": (0,),
    "Reshape": (0,),
    "Gather": (0,),
    "Slice": (0,),
    "Concat": None,
    "Add": None,
    "Sub": None,
    "Mul": None,
    "Div": None,
}


# --- run-time shape vectors -----------------------------------------------------


@dataclass(frozen=True)
class ShapeElement:
    """One entry of a shape vector computed at run time.

    Either a literal read from a constant (`source` = node reading it, constant name,
    flat index: enough to rewrite it) or a dimension `dim` = (tensor, axis) read with
    Shape at run time.
    """

    literal: int | None = None
    source: tuple[str, str, int] | None = None
    dim: tuple[str, int] | None = None


def shape_elements(
    tensor: gs.Tensor, consumer: gs.Node, shapes: Mapping[str, Shape]
) -> list[ShapeElement] | None:
    """The entries of a 1-D shape vector, traced through Shape/Gather/Slice/Concat/Cast.

    None when an entry is computed by anything else (then nobody can say what it is).
    """
    if isinstance(tensor, gs.Constant):
        values = np.asarray(tensor.values).reshape(-1)
        return [
            ShapeElement(literal=int(v), source=(consumer.name, tensor.name, i))
            for i, v in enumerate(values)
        ]
    if len(tensor.inputs) != 1:
        return None
    node = tensor.inputs[0]
    try:
        return _trace(node, shapes)
    except (RuntimeValue, IndexError, ValueError):
        return None


def _trace(node: gs.Node, shapes: Mapping[str, Shape]) -> list[ShapeElement] | None:
    if node.op == "Shape":
        source = node.inputs[0]
        shape = shapes.get(source.name)
        if shape is None:
            return None
        rank = len(shape)
        start = int(node.attrs.get("start", 0))
        end = int(node.attrs.get("end", rank))
        return [ShapeElement(dim=(source.name, a)) for a in range(rank)[slice(start, end)]]
    if node.op in ("Identity", "Cast", "Unsqueeze", "Squeeze"):
        if node.op == "Cast" and not np.issubdtype(
            helper.tensor_dtype_to_np_dtype(int(node.attrs["to"])), np.integer
        ):
            return None
        return shape_elements(node.inputs[0], node, shapes)
    if node.op == "Concat":
        out: list[ShapeElement] = []
        for t in node.inputs:
            part = shape_elements(t, node, shapes)
            if part is None:
                return None
            out += part
        return out
    if node.op in ("Gather", "Slice"):
        inner = shape_elements(node.inputs[0], node, shapes)
        if inner is None:
            return None
        index = np.arange(len(inner))
        if node.op == "Gather":
            picked = np.take(index, _const_ints(node, 1)).reshape(-1)
        else:
            starts = int_operand(node, "starts", 1) or []
            ends = int_operand(node, "ends", 2) or []
            steps = int_operand(node, "steps", 4) or [1] * len(starts)
            if len(starts) != 1:
                return None
            picked = index[slice_bounds(len(inner), starts[0], ends[0], steps[0])]
        return [inner[int(i)] for i in picked]
    return None


def _const_ints(node: gs.Node, index: int) -> Array:
    tensor = node.inputs[index]
    if not isinstance(tensor, gs.Constant):
        raise RuntimeValue(tensor.name)
    return np.asarray(tensor.values).astype(np.int64)


def reshape_output_shapes(graph: gs.Graph, shapes: Mapping[str, Shape]) -> dict[str, Shape]:
    """Output shapes of Reshapes that shape inference left unknown, from their traced targets.

    ONNX data propagation stops at some run-time shape arithmetic (Cast, Slice of a
    Shape) or invents fresh symbols for dims it cannot relate; tracing the target
    entry by entry recovers the shape exactly: literals, dims read from other tensors
    (possibly symbolic), and -1 solved from the input.
    """
    found: dict[str, Shape] = {}
    for node in graph.nodes:
        inferred = shapes.get(node.outputs[0].name)
        if node.op != "Reshape" or (inferred is not None and _static(inferred)):
            continue
        in_shape = shapes.get(node.inputs[0].name)
        elements = shape_elements(node.inputs[1], node, shapes)
        if in_shape is None or elements is None:
            continue
        dims: list = []
        for i, e in enumerate(elements):
            if e.dim is not None:
                source = shapes.get(e.dim[0])
                dims.append(None if source is None else source[e.dim[1]])
            elif e.literal == 0 and not int(node.attrs.get("allowzero", 0)):
                dims.append(in_shape[i] if i < len(in_shape) else None)
            else:
                dims.append(e.literal)
        if -1 in dims:
            dims[dims.index(-1)] = _solve(in_shape, [d for d in dims if d != -1])
        if None in dims or tuple(dims) == inferred:
            continue
        if inferred is None or sum(map(_static_dim, dims)) >= sum(map(_static_dim, inferred)):
            found[node.outputs[0].name] = tuple(dims)
    return found


def _static_dim(d: object) -> bool:
    return isinstance(d, int)


def _static(shape: Shape) -> bool:
    return all(map(_static_dim, shape))


def _solve(in_shape: Shape, known: Sequence) -> int | str | None:
    """The size of a -1 entry: input elements / known entries, symbols cancelling out."""
    symbols = [d for d in in_shape if not isinstance(d, int)]
    other = [d for d in known if not isinstance(d, int)]
    if None in symbols or None in other or sorted(symbols) != sorted(other):
        return None
    total = int(np.prod([d for d in in_shape if isinstance(d, int)], dtype=np.int64))
    part = int(np.prod([d for d in known if isinstance(d, int)], dtype=np.int64))
    return total // part if part and total % part == 0 else None
