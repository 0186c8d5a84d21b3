"""One rule per ONNX op type: how a group's channels couple across a node.

A rule receives the node, the slot through which the group reached it (an input
or output index), the channel axis on that tensor and the channel positions, and
answers with a `Coupling`: the other tensors that carry the same channels (with
their axis and positions), the parameter slices that must shrink with them, and
constant shape operands that spell out a channel count. A rule that cannot prove
the mapping raises `Blocked` with the reason; op types missing from `RULES` block
too (DESIGN §5: never guess).

`ROOTS` says which nodes create new channels that may be pruned, and on what axis.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import Shape
from onnxprune.indexmap import Unmappable, flatten_dims, through_reshape


class Blocked(Exception):
    """The group cannot be pruned through this node; the message says why."""


@dataclass(eq=False)
class ParamSlice:
    """Slices of a constant that belong to the group's channels.

    role: "out" — weights that compute the channels (a filter); "in" — weights of
    a consumer that reads them; "affine" — per-channel constants (BN, bias, scale).
    """

    initializer: str
    node: str
    axis: int
    positions: np.ndarray
    role: str


@dataclass(eq=False)
class ShapeFix:
    """A literal in a constant shape operand that must equal a tensor's new axis size."""

    node: str
    initializer: str
    index: int
    tensor: str
    axis: int


@dataclass(eq=False)
class Link:
    """Another tensor carrying the group's channels, on `axis` at `positions`."""

    tensor: gs.Variable
    axis: int
    positions: np.ndarray


@dataclass(eq=False)
class Coupling:
    links: list[Link] = field(default_factory=list)
    params: list[ParamSlice] = field(default_factory=list)
    shape_fixes: list[ShapeFix] = field(default_factory=list)


@dataclass(frozen=True, eq=False)
class Visit:
    """How the group reached a node: through input or output `index`, on `axis`."""

    node: gs.Node
    side: str  # "in" | "out"
    index: int
    axis: int
    positions: np.ndarray
    shapes: Mapping[str, Shape]

    @property
    def tensor(self) -> gs.Tensor:
        return (self.node.inputs if self.side == "in" else self.node.outputs)[self.index]

    def shape_of(self, tensor: gs.Tensor) -> Shape:
        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.values.shape)
        shape = self.shapes.get(tensor.name)
        if shape is None:
            raise Blocked(f"shape of tensor '{tensor.name}' is unknown")
        return shape


Rule = Callable[[Visit], Coupling]


# --- helpers -------------------------------------------------------------------


def _const(node: gs.Node, index: int, what: str) -> gs.Constant:
    if index >= len(node.inputs) or not isinstance(node.inputs[index], gs.Constant):
        raise Blocked(f"{node.op} '{node.name}': {what} is computed at run time, not a constant")
    return node.inputs[index]


def _has_const(node: gs.Node, index: int) -> bool:
    return index < len(node.inputs) and isinstance(node.inputs[index], gs.Constant)


def _used(tensor: gs.Tensor) -> bool:
    return bool(tensor.outputs)


def _require_axis(visit: Visit, axis: int, what: str) -> None:
    if visit.axis != axis:
        raise Blocked(
            f"{visit.node.op} '{visit.node.name}' would need channels on axis {visit.axis}; "
            f"it only maps {what} (axis {axis})"
        )


def _only_first_output(node: gs.Node) -> None:
    for extra in node.outputs[1:]:
        if _used(extra):
            raise Blocked(f"{node.op} '{node.name}': its extra output '{extra.name}' is used")


def _attr_axis(node: gs.Node, rank: int, default: int) -> int:
    axis = int(node.attrs.get("axis", default))
    return axis + rank if axis < 0 else axis


def _no_graph_valued_slot(visit: Visit) -> None:
    if visit.side == "in" and visit.index != 0:
        raise Blocked(f"{visit.node.op} '{visit.node.name}': channels reach a parameter input")


# --- rules ---------------------------------------------------------------------


def channel_preserving(visit: Visit) -> Coupling:
    """Ops that act on each element (or each channel) alone: input 0 <-> output 0."""
    _no_graph_valued_slot(visit)
    node = visit.node
    _only_first_output(node)
    for extra in node.inputs[1:]:
        # Clip min/max, LeakyRelu-style scalars: fine if constant scalars.
        if extra.name and not (isinstance(extra, gs.Constant) and extra.values.size == 1):
            raise Blocked(f"{node.op} '{node.name}': input '{extra.name}' is not a scalar constant")
    if visit.side == "in":
        return Coupling(links=[Link(node.outputs[0], visit.axis, visit.positions)])
    return Coupling(links=[Link(node.inputs[0], visit.axis, visit.positions)])


def spatial_pool(visit: Visit) -> Coupling:
    """Pooling reduces spatial dims per channel; the channel axis (1) passes through."""
    _require_axis(visit, 1, "the channel axis")
    if visit.side == "out" and visit.index != 0:
        raise Blocked(f"{visit.node.op} '{visit.node.name}': channels reach its indices output")
    return channel_preserving(visit)


def batch_norm(visit: Visit) -> Coupling:
    """BatchNormalization: scale, bias, mean and variance are sliced with the channel."""
    node = visit.node
    _require_axis(visit, 1, "the channel axis")
    _no_graph_valued_slot(visit)
    _only_first_output(node)
    params = [
        ParamSlice(_const(node, i, "a BN parameter").name, node.name, 0, visit.positions, "affine")
        for i in range(1, 5)
    ]
    other = node.outputs[0] if visit.side == "in" else node.inputs[0]
    return Coupling(links=[Link(other, 1, visit.positions)], params=params)


def elementwise(visit: Visit) -> Coupling:
    """Broadcasting n-ary ops: operands with the channel axis are coupled, others broadcast.

    A variable operand that carries the axis joins the group (a residual Add couples
    both branches); a constant one is sliced; a size-1 or missing axis broadcasts.
    """
    node = visit.node
    out = node.outputs[0]
    out_rank = len(visit.shape_of(out))
    here_rank = len(visit.shape_of(visit.tensor))
    out_axis = visit.axis + (out_rank - here_rank)
    size = visit.shape_of(visit.tensor)[visit.axis]
    coupling = Coupling()
    for i, operand in enumerate(node.inputs):
        if visit.side == "in" and i == visit.index:
            continue
        shape = visit.shape_of(operand)
        axis = out_axis - (out_rank - len(shape))
        if axis < 0 or shape[axis] == 1:
            continue  # broadcast along the channel axis: nothing to slice
        if shape[axis] != size:
            raise Blocked(
                f"{node.op} '{node.name}': operand '{operand.name}' has {shape[axis]} "
                f"entries on the channel axis, expected {size}"
            )
        if isinstance(operand, gs.Constant):
            coupling.params.append(
                ParamSlice(operand.name, node.name, axis, visit.positions, "affine")
            )
        else:
            coupling.links.append(Link(operand, axis, visit.positions))
    if visit.side == "in":
        coupling.links.append(Link(out, out_axis, visit.positions))
    return coupling


def conv(visit: Visit) -> Coupling:
    """Conv with group = 1: input channels are weight axis 1, output channels axis 0."""
    node = visit.node
    groups = int(node.attrs.get("group", 1))
    if groups != 1:
        raise Blocked(f"Conv '{node.name}' is grouped (group={groups}); no rule maps it yet")
    weight = _const(node, 1, "the weight")
    _require_axis(visit, 1, "the channel axis")
    if visit.side == "in":
        _no_graph_valued_slot(visit)
        return Coupling(params=[ParamSlice(weight.name, node.name, 1, visit.positions, "in")])
    params = [ParamSlice(weight.name, node.name, 0, visit.positions, "out")]
    if _has_const(node, 2):
        params.append(ParamSlice(node.inputs[2].name, node.name, 0, visit.positions, "out"))
    elif len(node.inputs) > 2 and node.inputs[2].name:
        raise Blocked(f"Conv '{node.name}': bias is computed at run time")
    return Coupling(params=params)


def gemm(visit: Visit) -> Coupling:
    """Gemm Y = alpha*A'B' + beta*C with constant B: features in = B's K axis, out = N axis."""
    node = visit.node
    trans_a = int(node.attrs.get("transA", 0))
    trans_b = int(node.attrs.get("transB", 0))
    weight = _const(node, 1, "B (the weight)")
    in_axis_b, out_axis_b = (1, 0) if trans_b else (0, 1)
    if visit.side == "in":
        if visit.index != 0:
            raise Blocked(f"Gemm '{node.name}': channels reach input {visit.index}")
        _require_axis(visit, 0 if trans_a else 1, "A's feature axis")
        return Coupling(
            params=[ParamSlice(weight.name, node.name, in_axis_b, visit.positions, "in")]
        )
    _require_axis(visit, 1, "Y's feature axis")
    params = [ParamSlice(weight.name, node.name, out_axis_b, visit.positions, "out")]
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = _const(node, 2, "C (the bias)")
        shape = bias.values.shape
        if len(shape) >= 1 and shape[-1] > 1:
            params.append(ParamSlice(bias.name, node.name, len(shape) - 1, visit.positions, "out"))
    return Coupling(params=params)


def matmul(visit: Visit) -> Coupling:
    """MatMul A @ W with a constant 2-D W: A's last axis = W rows, Y's last axis = W columns."""
    node = visit.node
    weight = _const(node, 1, "the right operand (weight)")
    if weight.values.ndim != 2:
        raise Blocked(f"MatMul '{node.name}': weight has rank {weight.values.ndim}, expected 2")
    last = len(visit.shape_of(visit.tensor)) - 1
    _require_axis(visit, last, "the last (feature) axis")
    if visit.side == "in":
        if visit.index != 0:
            raise Blocked(f"MatMul '{node.name}': channels reach input {visit.index}")
        return Coupling(params=[ParamSlice(weight.name, node.name, 0, visit.positions, "in")])
    return Coupling(params=[ParamSlice(weight.name, node.name, 1, visit.positions, "out")])


def flatten(visit: Visit) -> Coupling:
    """Flatten: a channel maps to the block of flattened features it owns (and back)."""
    node = visit.node
    in_shape = visit.shape_of(node.inputs[0])
    axis_attr = _attr_axis(node, len(in_shape), 1)
    out_shape = flatten_dims(in_shape, axis_attr)
    return _reshape_like(visit, in_shape, out_shape)


def reshape(visit: Visit) -> Coupling:
    """Reshape: exact position map, and constant targets that spell the channel count."""
    node = visit.node
    _no_graph_valued_slot(visit)
    target = _const(node, 1, "the target shape")
    in_shape = visit.shape_of(node.inputs[0])
    out_shape = visit.shape_of(node.outputs[0])
    coupling = _reshape_like(visit, in_shape, out_shape)
    out_link = coupling.links[0] if visit.side == "in" else None
    out_axis = out_link.axis if out_link else visit.axis
    literal = target.values.reshape(-1)
    if out_axis < literal.size and literal[out_axis] > 0:
        coupling.shape_fixes.append(
            ShapeFix(node.name, target.name, out_axis, node.outputs[0].name, out_axis)
        )
    return coupling


def _reshape_like(visit: Visit, in_shape: Shape, out_shape: Shape) -> Coupling:
    node = visit.node
    _no_graph_valued_slot(visit)
    try:
        if visit.side == "in":
            axis, positions = through_reshape(in_shape, visit.axis, visit.positions, out_shape)
            return Coupling(links=[Link(node.outputs[0], axis, positions)])
        axis, positions = through_reshape(out_shape, visit.axis, visit.positions, in_shape)
        return Coupling(links=[Link(node.inputs[0], axis, positions)])
    except Unmappable as exc:
        raise Blocked(f"{node.op} '{node.name}': {exc}") from exc


def transpose(visit: Visit) -> Coupling:
    """Transpose moves the channel axis: follow the permutation."""
    node = visit.node
    rank = len(visit.shape_of(node.inputs[0]))
    perm = [int(p) for p in node.attrs.get("perm", list(range(rank))[::-1])]
    if visit.side == "in":
        return Coupling(links=[Link(node.outputs[0], perm.index(visit.axis), visit.positions)])
    return Coupling(links=[Link(node.inputs[0], perm[visit.axis], visit.positions)])


def concat(visit: Visit) -> Coupling:
    """Concat along another axis couples every operand; along the channel axis it blocks."""
    node = visit.node
    rank = len(visit.shape_of(node.outputs[0]))
    if _attr_axis(node, rank, 0) == visit.axis:
        raise Blocked(f"Concat '{node.name}' joins tensors along the channel axis; not mapped yet")
    coupling = Coupling()
    for i, operand in enumerate(node.inputs):
        if visit.side == "in" and i == visit.index:
            continue
        if isinstance(operand, gs.Constant):
            coupling.params.append(
                ParamSlice(operand.name, node.name, visit.axis, visit.positions, "affine")
            )
        else:
            coupling.links.append(Link(operand, visit.axis, visit.positions))
    if visit.side == "in":
        coupling.links.append(Link(node.outputs[0], visit.axis, visit.positions))
    return coupling


_UNARY = [
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Clip",
    "Elu",
    "Selu",
    "Celu",
    "Softplus",
    "Softsign",
    "Abs",
    "Neg",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "Erf",
    "Gelu",
    "Mish",
    "ThresholdedRelu",
    "Floor",
    "Ceil",
    "Round",
    "Sign",
    "Sin",
    "Cos",
    "Identity",
    "Dropout",
    "Cast",
]
_ELEMENTWISE = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean"]
_POOL = ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"]

RULES: dict[str, Rule] = {
    **{op: channel_preserving for op in _UNARY},
    **{op: elementwise for op in _ELEMENTWISE},
    **{op: spatial_pool for op in _POOL},
    "PRelu": elementwise,  # its slope may be per-channel: sliced like a constant operand
    "BatchNormalization": batch_norm,
    "Conv": conv,
    "Gemm": gemm,
    "MatMul": matmul,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Concat": concat,
}


# --- roots ---------------------------------------------------------------------


def _conv_root(node: gs.Node, shapes: Mapping[str, Shape]) -> tuple[int, int] | None:
    if int(node.attrs.get("group", 1)) != 1 or not _has_const(node, 1):
        return None
    return 1, int(node.inputs[1].values.shape[0])


def _gemm_root(node: gs.Node, shapes: Mapping[str, Shape]) -> tuple[int, int] | None:
    if not _has_const(node, 1):
        return None
    weight = node.inputs[1].values
    return 1, int(weight.shape[0] if int(node.attrs.get("transB", 0)) else weight.shape[1])


def _matmul_root(node: gs.Node, shapes: Mapping[str, Shape]) -> tuple[int, int] | None:
    if not _has_const(node, 1) or node.inputs[1].values.ndim != 2:
        return None
    out_shape = shapes.get(node.outputs[0].name)
    if out_shape is None:
        return None
    return len(out_shape) - 1, int(node.inputs[1].values.shape[1])


RootRule = Callable[[gs.Node, Mapping[str, Shape]], "tuple[int, int] | None"]

ROOTS: dict[str, RootRule] = {
    "Conv": _conv_root,
    "Gemm": _gemm_root,
    "MatMul": _matmul_root,
}
