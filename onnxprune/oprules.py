"""One rule per ONNX op type: how a group's channels couple across a node.

A rule receives the node, the slot through which the group reached it (an input
or output index), the channel axis on that tensor and the channel positions, and
answers with a `Coupling`: the other tensors that carry the same channels (with
their axis and positions), the parameter slices that must shrink with them, and
the fixes surgery must apply to constants and attributes that spell a channel
count (reshape targets, Split sizes, Slice bounds, a depthwise conv's `group`).
A rule that cannot prove the mapping raises `Blocked` with the reason; op types
missing from `RULES` block too (DESIGN §5: never guess). A map that exists only
once the group's channels are merged into units or separated into several groups
raises `indexmap.Regroup`, and the dependency graph restarts the group.

`ROOTS` says which nodes create new channels that may be pruned, on what axis,
and in which units (a grouped convolution's channels come in units of one per group).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.fold import shape_elements, slice_bounds
from onnxprune.graph import RuntimeValue, Shape, int_operand
from onnxprune.indexmap import (
    Unmappable,
    axis_after_removing,
    axis_before_removing,
    collapse_blocks,
    collapse_strided,
    expand_blocks,
    expand_strided,
    flatten_dims,
    identity,
    shift,
    split_ranges,
    through_reshape,
)


class Blocked(Exception):
    """The group cannot be pruned through this node; the message says why."""


@dataclass(eq=False)
class ParamSlice:
    """Slices of a constant that belong to the group's channels.

    role: "out" — weights that compute the channels (a filter); "in" — weights of
    a consumer that reads them (zeroing these is what masking means); "affine" —
    per-channel constants (BN, bias, scale, a depthwise filter) that act on one
    channel alone.
    """

    initializer: str
    node: str
    axis: int
    positions: np.ndarray
    role: str


# --- fixes: constants and attributes surgery rewrites ----------------------------


@dataclass(eq=False)
class ShapeFix:
    """A literal in a constant shape operand that must equal a tensor's new axis size."""

    kind: ClassVar[str] = "shape"
    node: str
    initializer: str
    index: int
    tensor: str
    axis: int

    def key(self) -> tuple:
        return (self.kind, self.node, self.initializer, self.index)


@dataclass(eq=False)
class SplitFix:
    """Split sizes along `axis` of input `tensor` shrink by the removed positions in each part."""

    kind: ClassVar[str] = "split"
    node: str
    tensor: str
    axis: int
    sizes: tuple[int, ...]

    def key(self) -> tuple:
        return (self.kind, self.node)


@dataclass(eq=False)
class SliceFix:
    """Entry `entry` of a Slice's bounds (on `axis` of `tensor`) moves past removed positions."""

    kind: ClassVar[str] = "slice"
    node: str
    tensor: str
    axis: int
    entry: int
    start: int
    end: int

    def key(self) -> tuple:
        return (self.kind, self.node, self.entry)


@dataclass(eq=False)
class GroupFix:
    """A depthwise conv's `group` = its input channels (after removal) / `per_group`."""

    kind: ClassVar[str] = "group"
    node: str
    tensor: str
    axis: int
    per_group: int

    def key(self) -> tuple:
        return (self.kind, self.node)


Fix = ShapeFix | SplitFix | SliceFix | GroupFix


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
    fixes: list[Fix] = field(default_factory=list)
    produces: bool = False  # the node computes the group's channels (counts as a root)


@dataclass(frozen=True, eq=False)
class Visit:
    """How the group reached a node: through input or output `index`, on `axis`."""

    node: gs.Node
    side: str  # "in" | "out"
    index: int
    axis: int
    positions: np.ndarray
    shapes: Mapping[str, Shape]
    opset: int = 17

    @property
    def tensor(self) -> gs.Tensor:
        return (self.node.inputs if self.side == "in" else self.node.outputs)[self.index]

    def shape_of(self, tensor: gs.Tensor) -> Shape:
        if isinstance(tensor, gs.Constant):
            return tuple(int(d) for d in tensor.shape)
        shape = self.shapes.get(tensor.name)
        if shape is None:
            raise Blocked(f"shape of tensor '{tensor.name}' is unknown")
        return shape

    def rank(self, tensor: gs.Tensor | None = None) -> int:
        return len(self.shape_of(self.tensor if tensor is None else tensor))

    def dim(self, tensor: gs.Tensor, axis: int) -> int:
        size = self.shape_of(tensor)[axis]
        if not isinstance(size, int):
            raise Blocked(f"axis {axis} of tensor '{tensor.name}' has no static size")
        return size


Rule = Callable[[Visit], Coupling]


# --- helpers -------------------------------------------------------------------


def _const(node: gs.Node, index: int, what: str) -> gs.Constant:
    if index >= len(node.inputs) or not isinstance(node.inputs[index], gs.Constant):
        raise Blocked(f"{node.op} '{node.name}': {what} is computed at run time, not a constant")
    return node.inputs[index]


def _has_const(node: gs.Node, index: int) -> bool:
    return index < len(node.inputs) and isinstance(node.inputs[index], gs.Constant)


def _present(node: gs.Node, index: int) -> bool:
    return index < len(node.inputs) and bool(node.inputs[index].name)


def _ints(node: gs.Node, attr: str, index: int) -> list[int] | None:
    """An attribute-or-input integer list (opset drift); a run-time input blocks."""
    try:
        return int_operand(node, attr, index)
    except RuntimeValue as exc:
        raise Blocked(f"{node.op} '{node.name}': {exc} is computed at run time") from exc


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


def _attr_axis(node: gs.Node, rank: int, default: int, name: str = "axis") -> int:
    axis = int(node.attrs.get(name, default))
    return axis + rank if axis < 0 else axis


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return sorted(a + rank if a < 0 else a for a in axes)


def _no_graph_valued_slot(visit: Visit) -> None:
    if visit.side == "in" and visit.index != 0:
        raise Blocked(f"{visit.node.op} '{visit.node.name}': channels reach a parameter input")


def _passthrough(visit: Visit, in_axis: int | None = None, out_axis: int | None = None) -> Coupling:
    """Input 0 <-> output 0, the channel axis moving from in_axis to out_axis."""
    node = visit.node
    in_axis = visit.axis if in_axis is None else in_axis
    out_axis = in_axis if out_axis is None else out_axis
    if visit.side == "in":
        return Coupling(links=[Link(node.outputs[0], out_axis, visit.positions)])
    return Coupling(links=[Link(node.inputs[0], in_axis, visit.positions)])


def _mapped(node: gs.Node, fn: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        return fn()
    except Unmappable as exc:
        raise Blocked(f"{node.op} '{node.name}': {exc}") from exc


# --- elementwise and per-channel ops --------------------------------------------


def channel_preserving(visit: Visit) -> Coupling:
    """Ops that act on each element (or each channel) alone: input 0 <-> output 0."""
    _no_graph_valued_slot(visit)
    node = visit.node
    _only_first_output(node)
    for extra in node.inputs[1:]:
        # Clip min/max, Dropout ratio: fine if constant scalars.
        if extra.name and not (isinstance(extra, gs.Constant) and extra.values.size == 1):
            raise Blocked(f"{node.op} '{node.name}': input '{extra.name}' is not a scalar constant")
    return _passthrough(visit)


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
    return Coupling(links=_passthrough(visit).links, params=params)


def instance_norm(visit: Visit) -> Coupling:
    """InstanceNormalization normalizes each channel over space: scale and bias are sliced."""
    node = visit.node
    _no_graph_valued_slot(visit)
    if visit.axis != 1:
        raise Blocked(f"InstanceNormalization '{node.name}' normalizes over axis {visit.axis}")
    params = [
        ParamSlice(_const(node, i, "scale/bias").name, node.name, 0, visit.positions, "affine")
        for i in (1, 2)
    ]
    return Coupling(links=_passthrough(visit).links, params=params)


def layer_norm(visit: Visit) -> Coupling:
    """LayerNormalization normalizes over axes [axis, rank): the channel must lie before them."""
    node = visit.node
    _no_graph_valued_slot(visit)
    _only_first_output(node)
    rank = visit.rank()
    axis = _attr_axis(node, rank, -1)
    if visit.axis >= axis:
        raise Blocked(
            f"LayerNormalization '{node.name}' normalizes over the channel axis "
            f"(axes {axis}..{rank - 1}); removing a channel changes every other one"
        )
    return _passthrough(visit)


def group_norm(visit: Visit) -> Coupling:
    raise Blocked(
        f"GroupNormalization '{visit.node.name}' normalizes over groups of channels; "
        "only whole groups could be removed (not implemented)"
    )


def mean_variance_norm(visit: Visit) -> Coupling:
    """MeanVarianceNormalization over `axes`: fine unless the channel axis is among them."""
    node = visit.node
    _no_graph_valued_slot(visit)
    axes = _norm_axes(node.attrs.get("axes", [0, 2, 3]), visit.rank())
    if visit.axis in axes:
        raise Blocked(f"MeanVarianceNormalization '{node.name}' normalizes over the channel axis")
    return _passthrough(visit)


def lrn(visit: Visit) -> Coupling:
    """LRN divides each channel by a sum over its neighbours: the channel axis mixes."""
    if visit.axis == 1:
        raise Blocked(
            f"LRN '{visit.node.name}' normalizes each channel by its neighbours "
            "(removing one changes the others)"
        )
    return channel_preserving(visit)


def softmax(visit: Visit) -> Coupling:
    """Softmax-like ops normalize along `axis` (opset < 13: over all axes from `axis` on)."""
    node = visit.node
    _no_graph_valued_slot(visit)
    rank = visit.rank()
    legacy = visit.opset < 13
    axis = _attr_axis(node, rank, 1 if legacy else -1)
    mixes = visit.axis >= axis if legacy else visit.axis == axis
    if mixes:
        raise Blocked(f"{node.op} '{node.name}' normalizes over the channel axis")
    return _passthrough(visit)


def lp_normalization(visit: Visit) -> Coupling:
    node = visit.node
    _no_graph_valued_slot(visit)
    if _attr_axis(node, visit.rank(), -1) == visit.axis:
        raise Blocked(f"LpNormalization '{node.name}' normalizes over the channel axis")
    return _passthrough(visit)


def elementwise(visit: Visit) -> Coupling:
    """Broadcasting n-ary ops: operands with the channel axis are coupled, others broadcast.

    A variable operand that carries the axis joins the group (a residual Add couples
    both branches, a squeeze-excitation Mul its [N, C, 1, 1] gate); a constant one is
    sliced; a size-1 or missing axis broadcasts.
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
        if not operand.name:
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


# --- layers --------------------------------------------------------------------


def _bias(node: gs.Node, index: int, positions: np.ndarray, role: str) -> list[ParamSlice]:
    if _has_const(node, index):
        return [ParamSlice(node.inputs[index].name, node.name, 0, positions, role)]
    if _present(node, index):
        raise Blocked(f"{node.op} '{node.name}': bias is computed at run time")
    return []


def conv(visit: Visit) -> Coupling:
    """Conv: weight [C_out, C_in/group, k...].

    group = 1: input channels are weight axis 1, output channels axis 0. Depthwise
    (C_in/group = 1): each input channel owns its own block of outputs, so they are
    one channel and `group` is rewritten. Grouped: a unit holds the same offset in
    every group, so the groups stay equal.
    """
    node = visit.node
    _require_axis(visit, 1, "the channel axis")
    _no_graph_valued_slot(visit)
    weight = _const(node, 1, "the weight")
    groups = int(node.attrs.get("group", 1))
    c_out, per_group_in = (int(d) for d in weight.shape[:2])
    if groups > 1 and per_group_in == 1:
        return _depthwise(visit, weight.name, 0, c_out // groups, out_per_in_axis=True)
    pos = visit.positions
    if visit.side == "in":
        if groups == 1:
            return Coupling(params=[ParamSlice(weight.name, node.name, 1, pos, "in")])
        offsets = _grouped(node, groups, lambda: collapse_strided(pos, per_group_in, groups))
        return Coupling(params=[ParamSlice(weight.name, node.name, 1, offsets, "in")])
    if groups > 1:
        _grouped(node, groups, lambda: collapse_strided(pos, c_out // groups, groups))
    params = [ParamSlice(weight.name, node.name, 0, pos, "out"), *_bias(node, 2, pos, "out")]
    return Coupling(params=params, produces=True)


def conv_transpose(visit: Visit) -> Coupling:
    """ConvTranspose: weight [C_in, C_out/group, k...] (the transpose of Conv's layout)."""
    node = visit.node
    _require_axis(visit, 1, "the channel axis")
    _no_graph_valued_slot(visit)
    weight = _const(node, 1, "the weight")
    spatial = len(weight.shape) - 2
    if len(node.attrs.get("output_shape", [0] * spatial)) != spatial:
        raise Blocked(f"ConvTranspose '{node.name}': output_shape names more than spatial dims")
    groups = int(node.attrs.get("group", 1))
    c_in, per_group_out = (int(d) for d in weight.shape[:2])
    per_group_in = c_in // groups
    if groups > 1 and per_group_in == 1:
        return _depthwise(visit, weight.name, 0, per_group_out, out_per_in_axis=False)
    pos = visit.positions
    if visit.side == "in":
        if groups > 1:
            _grouped(node, groups, lambda: collapse_strided(pos, per_group_in, groups))
        return Coupling(params=[ParamSlice(weight.name, node.name, 0, pos, "in")])
    offsets = pos
    if groups > 1:
        offsets = _grouped(node, groups, lambda: collapse_strided(pos, per_group_out, groups))
    params = [ParamSlice(weight.name, node.name, 1, offsets, "out"), *_bias(node, 2, pos, "out")]
    return Coupling(params=params, produces=True)


def _grouped(node: gs.Node, groups: int, fn: Callable[[], np.ndarray]) -> np.ndarray:
    """A grouped conv's map: channels go one per group, or the groups would become unequal."""
    try:
        return fn()
    except Unmappable as exc:
        raise Blocked(
            f"{node.op} '{node.name}' (group={groups}): removing channels must keep its groups "
            f"equal; {exc}"
        ) from exc


def _depthwise(
    visit: Visit, weight: str, weight_axis: int, multiplier: int, out_per_in_axis: bool
) -> Coupling:
    """Depthwise (transposed) conv: input channel c owns outputs [c*m, (c+1)*m).

    The filter and bias act on that channel alone ("affine"), and `group` (= the
    input channel count) is rewritten. out_per_in_axis: the weight's axis 0 counts
    output channels (Conv) rather than input channels (ConvTranspose).
    """
    node = visit.node
    if visit.side == "in":
        pos_in = visit.positions
        pos_out = expand_blocks(pos_in, multiplier)
    else:
        pos_out = visit.positions
        pos_in = _mapped(node, lambda: collapse_blocks(pos_out, multiplier))
    weight_pos = pos_out if out_per_in_axis else pos_in
    params = [ParamSlice(weight, node.name, weight_axis, weight_pos, "affine")]
    params += _bias(node, 2, pos_out, "affine")
    link = (
        Link(node.outputs[0], 1, pos_out) if visit.side == "in" else Link(node.inputs[0], 1, pos_in)
    )
    fix = GroupFix(node.name, node.inputs[0].name, 1, 1)
    return Coupling(links=[link], params=params, fixes=[fix], produces=True)


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
        shape = bias.shape
        if len(shape) >= 1 and shape[-1] > 1:
            params.append(ParamSlice(bias.name, node.name, len(shape) - 1, visit.positions, "out"))
    return Coupling(params=params, produces=True)


def matmul(visit: Visit) -> Coupling:
    """MatMul A @ W with a constant 2-D W: A's last axis = W rows, Y's last axis = W columns.

    Other axes of A (batch, tokens) pass through to Y unchanged.
    """
    node = visit.node
    if not _has_const(node, 1):
        raise Blocked(
            f"MatMul '{node.name}' multiplies two run-time tensors (attention-style); "
            "head-block pruning is not implemented"
        )
    weight = node.inputs[1]
    if visit.side == "in" and visit.index != 0:
        raise Blocked(f"MatMul '{node.name}': channels reach input {visit.index}")
    if len(weight.shape) != 2:
        raise Blocked(f"MatMul '{node.name}': weight has rank {len(weight.shape)}, expected 2")
    a, y = node.inputs[0], node.outputs[0]
    rank_a, rank_y = visit.rank(a), visit.rank(y)
    if rank_a < 2:
        raise Blocked(f"MatMul '{node.name}': left operand is a vector")
    if visit.side == "in":
        if visit.axis == rank_a - 1:
            return Coupling(params=[ParamSlice(weight.name, node.name, 0, visit.positions, "in")])
        return _passthrough(visit, visit.axis, visit.axis + rank_y - rank_a)
    if visit.axis == rank_y - 1:
        return Coupling(
            params=[ParamSlice(weight.name, node.name, 1, visit.positions, "out")], produces=True
        )
    return _passthrough(visit, visit.axis - (rank_y - rank_a), visit.axis)


def recurrent(visit: Visit) -> Coupling:
    raise Blocked(
        f"{visit.node.op} '{visit.node.name}' is a recurrent layer (gates mix the features); "
        "no rule maps it"
    )


def control_flow(visit: Visit) -> Coupling:
    raise Blocked(
        f"{visit.node.op} '{visit.node.name}' runs a subgraph (control flow); "
        "channels entering it cannot be followed"
    )


# --- shape ops -----------------------------------------------------------------


def flatten(visit: Visit) -> Coupling:
    """Flatten: a channel maps to the block of flattened features it owns (and back)."""
    node = visit.node
    in_shape = visit.shape_of(node.inputs[0])
    axis_attr = _attr_axis(node, len(in_shape), 1)
    out_shape = flatten_dims(in_shape, axis_attr)
    return _reshape_like(visit, in_shape, out_shape)


def reshape(visit: Visit) -> Coupling:
    """Reshape: exact position map; the target entry that spells the channel count is fixed.

    A constant target gets its literal rewritten. A target computed at run time is
    traced (Shape→Gather→Concat…): its channel entry must be -1 or a literal read
    from a constant (rewritten in place); anything else blocks.
    """
    node = visit.node
    _no_graph_valued_slot(visit)
    in_shape = visit.shape_of(node.inputs[0])
    out_shape = visit.shape_of(node.outputs[0])
    coupling = _reshape_like(visit, in_shape, out_shape)
    link = coupling.links[0]
    in_axis, out_axis = (visit.axis, link.axis) if visit.side == "in" else (link.axis, visit.axis)
    k_in, k_out = (
        (visit.positions.shape[1], link.positions.shape[1])
        if visit.side == "in"
        else (link.positions.shape[1], visit.positions.shape[1])
    )
    target = node.inputs[1]
    elements = shape_elements(target, node, visit.shapes)
    if elements is None or out_axis >= len(elements):
        raise Blocked(
            f"Reshape '{node.name}': the target shape is computed at run time by ops "
            "that cannot be traced"
        )
    entry = elements[out_axis]
    if entry.literal is None:
        raise Blocked(
            f"Reshape '{node.name}': the channel entry of its target is read at run time "
            f"({entry.dim[0] if entry.dim else '?'})"
        )
    if entry.literal == 0 and not int(node.attrs.get("allowzero", 0)):
        if in_axis != out_axis or k_in != k_out:
            raise Blocked(f"Reshape '{node.name}': target copies a dim that does not shrink")
    elif entry.literal > 0:
        if entry.source is None:
            raise Blocked(f"Reshape '{node.name}': channel entry of the target is not rewritable")
        reader, constant, index = entry.source
        coupling.fixes.append(ShapeFix(reader, constant, index, node.outputs[0].name, out_axis))
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
        return _passthrough(visit, visit.axis, perm.index(visit.axis))
    return _passthrough(visit, perm[visit.axis], visit.axis)


def squeeze(visit: Visit) -> Coupling:
    """Squeeze/Unsqueeze drop or insert size-1 axes: the channel axis index shifts."""
    node = visit.node
    _no_graph_valued_slot(visit)
    in_rank = visit.rank(node.inputs[0])
    axes = _ints(node, "axes", 1)
    if node.op == "Unsqueeze":
        out_rank = visit.rank(node.outputs[0])
        inserted = _norm_axes(axes or [], out_rank)
        if visit.side == "in":
            out_axis = axis_before_removing(visit.axis, inserted, out_rank)
            return _passthrough(visit, visit.axis, out_axis)
        if visit.axis in inserted:
            raise Blocked(f"Unsqueeze '{node.name}': channels on an inserted axis")
        return _passthrough(visit, axis_after_removing(visit.axis, inserted), visit.axis)
    if axes is None:
        shape = visit.shape_of(node.inputs[0])
        if any(not isinstance(d, int) for d in shape):
            raise Blocked(f"Squeeze '{node.name}' without axes on a tensor with dynamic dims")
        axes = [a for a, d in enumerate(shape) if d == 1]
    removed = _norm_axes(axes, in_rank)
    if visit.side == "in":
        if visit.axis in removed:
            raise Blocked(f"Squeeze '{node.name}' removes the channel axis")
        return _passthrough(visit, visit.axis, axis_after_removing(visit.axis, removed))
    return _passthrough(visit, axis_before_removing(visit.axis, removed, in_rank), visit.axis)


def reduce(visit: Visit) -> Coupling:
    """Reduce*: fine over other axes (the channel axis shifts if they are dropped)."""
    node = visit.node
    _no_graph_valued_slot(visit)
    rank = visit.rank(node.inputs[0])
    axes = _ints(node, "axes", 1)
    if not axes:
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return _passthrough(visit)
        axes = list(range(rank))
    reduced = _norm_axes(axes, rank)
    keep = int(node.attrs.get("keepdims", 1))
    return _reduced_axes(visit, reduced, keep, rank, "reduces over the channel axis")


def arg_reduce(visit: Visit) -> Coupling:
    """ArgMax/ArgMin along one axis: the channel axis must be another one."""
    node = visit.node
    _no_graph_valued_slot(visit)
    rank = visit.rank(node.inputs[0])
    reduced = [_attr_axis(node, rank, 0)]
    keep = int(node.attrs.get("keepdims", 1))
    return _reduced_axes(visit, reduced, keep, rank, "picks an index along the channel axis")


def _reduced_axes(visit: Visit, reduced: list[int], keep: int, rank: int, why: str) -> Coupling:
    node = visit.node
    if visit.side == "in":
        if visit.axis in reduced:
            raise Blocked(f"{node.op} '{node.name}' {why}")
        out_axis = visit.axis if keep else axis_after_removing(visit.axis, reduced)
        return _passthrough(visit, visit.axis, out_axis)
    in_axis = visit.axis if keep else axis_before_removing(visit.axis, reduced, rank)
    if in_axis in reduced:
        raise Blocked(f"{node.op} '{node.name}' {why}")
    return _passthrough(visit, in_axis, visit.axis)


def gather(visit: Visit) -> Coupling:
    """Gather along another axis: the channel axis shifts by the indices' rank."""
    node = visit.node
    if visit.side == "in" and visit.index != 0:
        raise Blocked(f"Gather '{node.name}': channels reach its indices")
    rank = visit.rank(node.inputs[0])
    axis = _attr_axis(node, rank, 0)
    index_rank = visit.rank(node.inputs[1])
    if visit.side == "in":
        if visit.axis == axis:
            raise Blocked(f"Gather '{node.name}' gathers along the channel axis")
        out_axis = visit.axis if visit.axis < axis else visit.axis - 1 + index_rank
        return _passthrough(visit, visit.axis, out_axis)
    if axis <= visit.axis < axis + index_rank:
        raise Blocked(f"Gather '{node.name}': channels on an axis of its indices")
    in_axis = visit.axis if visit.axis < axis else visit.axis + 1 - index_rank
    return _passthrough(visit, in_axis, visit.axis)


def shape(visit: Visit) -> Coupling:
    """Shape reads sizes, not values: safe unless the channel count is used at run time.

    Its output may feed Gather/Slice that pick other dims (a dynamic batch size); any
    other use of the channel entry would compute with a count that pruning changes.
    """
    node = visit.node
    rank = visit.rank(node.inputs[0])
    start = _attr_axis(node, rank, 0, "start")
    end = _attr_axis(node, rank, rank, "end") if "end" in node.attrs else rank
    if not start <= visit.axis < end:
        return Coupling()
    entry = visit.axis - start
    for consumer in node.outputs[0].outputs:
        if _picks_other_entries(consumer, entry, end - start):
            continue
        raise Blocked(
            f"Shape '{node.name}': the channel count is read at run time by "
            f"{consumer.op} '{consumer.name}'"
        )
    return Coupling()


def _picks_other_entries(consumer: gs.Node, entry: int, length: int) -> bool:
    """Whether `consumer` of a shape vector only reads entries other than `entry`."""
    if consumer.op in ("Cast", "Identity"):
        return all(_picks_other_entries(c, entry, length) for c in consumer.outputs[0].outputs)
    if consumer.op == "Gather" and _has_const(consumer, 1):
        picked = np.asarray(consumer.inputs[1].values).reshape(-1)
        return entry not in {int(i) % length for i in picked}
    if consumer.op == "Slice" and all(_has_const(consumer, i) for i in (1, 2)):
        try:
            starts = int_operand(consumer, "starts", 1) or []
            ends = int_operand(consumer, "ends", 2) or []
            steps = int_operand(consumer, "steps", 4) or [1] * len(starts)
        except RuntimeValue:
            return False
        if len(starts) != 1:
            return False
        picked = np.arange(length)[slice_bounds(length, starts[0], ends[0], steps[0])]
        return entry not in set(picked.tolist())
    return False


def size(visit: Visit) -> Coupling:
    raise Blocked(f"Size '{visit.node.name}' reads the element count, which pruning changes")


def expand(visit: Visit) -> Coupling:
    """Expand broadcasts to a shape: the channel entry of that shape is rewritten if it spells C."""
    node = visit.node
    _no_graph_valued_slot(visit)
    target = _const(node, 1, "the target shape")
    literal = np.asarray(target.values).reshape(-1)
    data, out = node.inputs[0], node.outputs[0]
    in_rank, out_rank = visit.rank(data), visit.rank(out)
    out_axis = visit.axis + (out_rank - in_rank) if visit.side == "in" else visit.axis
    in_axis = out_axis - (out_rank - in_rank)
    index = out_axis - (out_rank - literal.size)
    coupling = Coupling()
    if index >= 0 and literal[index] > 1:
        coupling.fixes.append(ShapeFix(node.name, target.name, int(index), out.name, out_axis))
    if visit.side == "in":
        coupling.links.append(Link(out, out_axis, visit.positions))
    elif in_axis >= 0 and visit.shape_of(data)[in_axis] != 1:
        coupling.links.append(Link(data, in_axis, visit.positions))
    return coupling


def tile(visit: Visit) -> Coupling:
    node = visit.node
    _no_graph_valued_slot(visit)
    repeats = _ints(node, "repeats", 1) or []
    if visit.axis < len(repeats) and repeats[visit.axis] != 1:
        raise Blocked(f"Tile '{node.name}' repeats the channel axis")
    return _passthrough(visit)


def concat(visit: Visit) -> Coupling:
    """Concat: along another axis every operand is coupled; along the channel axis, offsets.

    On the channel axis each input occupies a range of the output: a channel moves by
    the input's offset, and a channel of the output maps back to the input that holds it.
    """
    node = visit.node
    rank = len(visit.shape_of(node.outputs[0]))
    axis = _attr_axis(node, rank, 0)
    if axis != visit.axis:
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
    sizes = [visit.dim(t, axis) for t in node.inputs]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    if visit.side == "in":
        positions = shift(visit.positions, offsets[visit.index])
        return Coupling(links=[Link(node.outputs[0], axis, positions)])
    ranges = [(int(offsets[i]), int(offsets[i + 1])) for i in range(len(sizes))]
    coupling = Coupling()
    for operand, part in zip(node.inputs, split_ranges(visit.positions, ranges), strict=True):
        if part is None:
            continue
        if isinstance(operand, gs.Constant):
            coupling.params.append(ParamSlice(operand.name, node.name, axis, part, "affine"))
        else:
            coupling.links.append(Link(operand, axis, part))
    return coupling


def split(visit: Visit) -> Coupling:
    """Split: along the channel axis a channel goes to the output whose range holds it."""
    node = visit.node
    _no_graph_valued_slot(visit)
    data = node.inputs[0]
    rank = visit.rank(data)
    axis = _attr_axis(node, rank, 0)
    if axis != visit.axis:
        if visit.side == "out":
            return Coupling(links=[Link(data, visit.axis, visit.positions)])
        return Coupling(links=[Link(t, visit.axis, visit.positions) for t in node.outputs])
    total = visit.dim(data, axis)
    sizes = _ints(node, "split", 1)
    if sizes is None:
        n = len(node.outputs)
        if total % n:
            raise Blocked(f"Split '{node.name}': {total} channels do not split in {n} equal parts")
        sizes = [total // n] * n
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    fix = SplitFix(node.name, data.name, axis, tuple(int(s) for s in sizes))
    if visit.side == "out":
        positions = shift(visit.positions, offsets[visit.index])
        return Coupling(links=[Link(data, axis, positions)], fixes=[fix])
    ranges = [(int(offsets[i]), int(offsets[i + 1])) for i in range(len(sizes))]
    parts = split_ranges(visit.positions, ranges)
    links = [Link(t, axis, p) for t, p in zip(node.outputs, parts, strict=True) if p is not None]
    return Coupling(links=links, fixes=[fix])


def slice_(visit: Visit) -> Coupling:
    """Slice: a step-1 range of the channel axis keeps the channels inside it; bounds are fixed."""
    node = visit.node
    _no_graph_valued_slot(visit)
    data = node.inputs[0]
    rank = visit.rank(data)
    starts = _ints(node, "starts", 1) or []
    ends = _ints(node, "ends", 2) or []
    axes = _ints(node, "axes", 3)
    steps = _ints(node, "steps", 4) or [1] * len(starts)
    axes = list(range(len(starts))) if axes is None else [a + rank if a < 0 else a for a in axes]
    if visit.axis not in axes:
        return _passthrough(visit)
    entry = axes.index(visit.axis)
    if steps[entry] != 1:
        raise Blocked(f"Slice '{node.name}' steps by {steps[entry]} along the channel axis")
    bounds = slice_bounds(visit.dim(data, visit.axis), starts[entry], ends[entry], 1)
    start, end = bounds.start, max(bounds.stop, bounds.start)
    fix = SliceFix(node.name, data.name, visit.axis, entry, start, end)
    if visit.side == "out":
        return Coupling(links=[Link(data, visit.axis, shift(visit.positions, start))], fixes=[fix])
    (part,) = split_ranges(visit.positions, [(start, end)])
    links = [] if part is None else [Link(node.outputs[0], visit.axis, part)]
    return Coupling(links=links, fixes=[fix])


def resize(visit: Visit) -> Coupling:
    """Resize/Upsample scale spatial axes: the channel axis must keep scale 1 (or its size)."""
    node = visit.node
    _no_graph_valued_slot(visit)
    rank = visit.rank(node.inputs[0])
    if node.attrs.get("coordinate_transformation_mode") == "tf_crop_and_resize":
        raise Blocked(f"Resize '{node.name}' crops with a region of interest")
    axes = node.attrs.get("axes")
    axes = list(range(rank)) if axes is None else _norm_axes(axes, rank)
    if visit.axis not in axes:
        return _passthrough(visit)
    entry = axes.index(visit.axis)
    coupling = _passthrough(visit)
    if node.op == "Upsample" and "scales" in node.attrs:
        scales_value = np.asarray(node.attrs["scales"], dtype=np.float32)
        sizes_input = None
    else:
        scales_index = 1 if node.op == "Upsample" or visit.opset < 11 else 2
        scales_value = (
            np.asarray(_const(node, scales_index, "scales").values)
            if _present(node, scales_index)
            else None
        )
        sizes_input = (
            _const(node, 3, "sizes") if node.op == "Resize" and _present(node, 3) else None
        )
    if sizes_input is not None and np.asarray(sizes_input.values).size:
        if node.attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
            raise Blocked(f"Resize '{node.name}' keeps the aspect ratio across the channel axis")
        wanted = int(np.asarray(sizes_input.values).reshape(-1)[entry])
        if wanted != visit.dim(node.inputs[0], visit.axis):
            raise Blocked(f"Resize '{node.name}' scales the channel axis")
        coupling.fixes.append(
            ShapeFix(node.name, sizes_input.name, entry, node.outputs[0].name, visit.axis)
        )
        return coupling
    if scales_value is None or scales_value.size <= entry:
        raise Blocked(f"Resize '{node.name}': neither scales nor sizes are constants")
    if float(scales_value.reshape(-1)[entry]) != 1.0:
        raise Blocked(f"{node.op} '{node.name}' scales the channel axis")
    return coupling


def pad(visit: Visit) -> Coupling:
    """Pad: fine if nothing is added on the channel axis."""
    node = visit.node
    _no_graph_valued_slot(visit)
    rank = visit.rank(node.inputs[0])
    pads = _ints(node, "pads", 1)
    if pads is None:
        raise Blocked(f"Pad '{node.name}' has no pads")
    axes = _ints(node, "axes", 3) if visit.opset >= 18 else None
    axes = list(range(rank)) if axes is None else [a + rank if a < 0 else a for a in axes]
    if visit.axis in axes:
        i = axes.index(visit.axis)
        if pads[i] or pads[i + len(axes)]:
            raise Blocked(f"Pad '{node.name}' pads the channel axis")
    return _passthrough(visit)


def depth_to_space(visit: Visit) -> Coupling:
    """DepthToSpace: each output channel gathers b*b input channels (DCR or CRD order)."""
    node = visit.node
    _require_axis(visit, 1, "the channel axis")
    _no_graph_valued_slot(visit)
    b2 = int(node.attrs["blocksize"]) ** 2
    c_out = visit.dim(node.outputs[0], 1)
    crd = node.attrs.get("mode", "DCR") == "CRD"
    return _space_depth(visit, c_out, b2, crd, depth_side="in")


def space_to_depth(visit: Visit) -> Coupling:
    """SpaceToDepth: each input channel becomes b*b output channels, strided by C."""
    node = visit.node
    _require_axis(visit, 1, "the channel axis")
    _no_graph_valued_slot(visit)
    b2 = int(node.attrs["blocksize"]) ** 2
    c_in = visit.dim(node.inputs[0], 1)
    return _space_depth(visit, c_in, b2, crd=False, depth_side="out")


def _space_depth(visit: Visit, c: int, b2: int, crd: bool, depth_side: str) -> Coupling:
    """Map between the deep tensor (C*b*b channels) and the shallow one (C channels)."""
    node = visit.node
    pos = visit.positions
    if visit.side == depth_side:  # deep -> shallow: rows must hold every channel of a block
        if crd:
            other = _mapped(node, lambda: collapse_blocks(pos, b2))
        else:
            other = _mapped(node, lambda: collapse_strided(pos, c, b2))
    else:
        other = expand_blocks(pos, b2) if crd else expand_strided(pos, c, b2)
    target = node.outputs[0] if visit.side == "in" else node.inputs[0]
    return Coupling(links=[Link(target, 1, other)])


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
    "Not",
    "IsNaN",
    "IsInf",
    "Shrink",
]
_ELEMENTWISE = ["Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Mod", "Where"]
_ELEMENTWISE += ["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"]
_POOL = ["MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"]
_REDUCE = ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1"]
_REDUCE += ["ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"]

RULES: dict[str, Rule] = {
    **{op: channel_preserving for op in _UNARY},
    **{op: elementwise for op in _ELEMENTWISE},
    **{op: spatial_pool for op in _POOL},
    **{op: reduce for op in _REDUCE},
    **{op: softmax for op in ("Softmax", "LogSoftmax", "Hardmax")},
    **{op: recurrent for op in ("LSTM", "GRU", "RNN")},
    **{op: control_flow for op in ("If", "Loop", "Scan")},
    "PRelu": elementwise,  # its slope may be per-channel: sliced like a constant operand
    "BatchNormalization": batch_norm,
    "InstanceNormalization": instance_norm,
    "LayerNormalization": layer_norm,
    "GroupNormalization": group_norm,
    "MeanVarianceNormalization": mean_variance_norm,
    "LpNormalization": lp_normalization,
    "LRN": lrn,
    "Conv": conv,
    "ConvTranspose": conv_transpose,
    "Gemm": gemm,
    "MatMul": matmul,
    "Flatten": flatten,
    "Reshape": reshape,
    "Transpose": transpose,
    "Squeeze": squeeze,
    "Unsqueeze": squeeze,
    "ArgMax": arg_reduce,
    "ArgMin": arg_reduce,
    "Gather": gather,
    "Shape": shape,
    "Size": size,
    "Expand": expand,
    "Tile": tile,
    "Concat": concat,
    "Split": split,
    "Slice": slice_,
    "Resize": resize,
    "Upsample": resize,
    "Pad": pad,
    "DepthToSpace": depth_to_space,
    "SpaceToDepth": space_to_depth,
}


# --- roots ---------------------------------------------------------------------

RootUnits = tuple[int, np.ndarray]  # (channel axis, positions [units, k])


def _conv_root(node: gs.Node, shapes: Mapping[str, Shape]) -> RootUnits | None:
    if not _has_const(node, 1):
        return None
    groups = int(node.attrs.get("group", 1))
    c_out, per_group_in = (int(d) for d in node.inputs[1].shape[:2])
    if groups == 1:
        return 1, identity(c_out)
    if per_group_in == 1:
        return None  # depthwise: its channels are its input's
    return 1, expand_strided(identity(c_out // groups), c_out // groups, groups)


def _conv_transpose_root(node: gs.Node, shapes: Mapping[str, Shape]) -> RootUnits | None:
    if not _has_const(node, 1):
        return None
    groups = int(node.attrs.get("group", 1))
    c_in, per_group_out = (int(d) for d in node.inputs[1].shape[:2])
    if groups == 1:
        return 1, identity(per_group_out)
    if c_in // groups == 1:
        return None
    return 1, expand_strided(identity(per_group_out), per_group_out, groups)


def _gemm_root(node: gs.Node, shapes: Mapping[str, Shape]) -> RootUnits | None:
    if not _has_const(node, 1):
        return None
    weight = node.inputs[1]  # shapes only: the data need not be loaded for analysis
    return 1, identity(
        int(weight.shape[0] if int(node.attrs.get("transB", 0)) else weight.shape[1])
    )


def _matmul_root(node: gs.Node, shapes: Mapping[str, Shape]) -> RootUnits | None:
    if not _has_const(node, 1) or len(node.inputs[1].shape) != 2:
        return None
    out_shape = shapes.get(node.outputs[0].name)
    if out_shape is None:
        return None
    return len(out_shape) - 1, identity(int(node.inputs[1].shape[1]))


RootRule = Callable[[gs.Node, Mapping[str, Shape]], "RootUnits | None"]

ROOTS: dict[str, RootRule] = {
    "Conv": _conv_root,
    "ConvTranspose": _conv_transpose_root,
    "Gemm": _gemm_root,
    "MatMul": _matmul_root,
}
