"""surgery: remove the planned channels — slice parameters, apply fixes, re-infer shapes.

Fixes are applied by kind from a small table (`FIXERS`), each computing the new
value from the original sizes and the union of removed positions, so a fix that
several groups emit gives the same result once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.graph import Shape, export_model, infer_model
from onnxprune.oprules import Fix, GroupFix, ShapeFix, SliceFix, SplitFix
from onnxprune.pipeline import Context, Pass
from onnxprune.removal import Removal, resolve


class SurgeryPass(Pass):
    name = "surgery"
    description = "Delete pruned channels from every coupled parameter and shape constant."
    requires = ("graph", "groups", "plan", "source")
    provides = ("pruned",)

    def run(self, ctx: Context) -> None:
        removal = resolve(ctx.groups, ctx.plan)
        graph = ctx.graph
        tensors = graph.tensors()
        for (name, axis), positions in removal.params.items():
            const = tensors[name]
            const.values = np.delete(np.asarray(const.values), positions, axis=axis)
        editor = _Editor(graph, removal, ctx.shapes)
        for fix in removal.fixes:
            FIXERS[fix.kind](editor, fix)
        graph.cleanup(remove_unused_graph_inputs=False)
        # Intermediate shapes are stale now; inputs and outputs keep theirs (never narrowed).
        boundary = {t.name for t in (*graph.inputs, *graph.outputs)}
        for tensor in graph.tensors().values():
            if isinstance(tensor, gs.Variable) and tensor.name not in boundary:
                tensor.shape = None
        model = export_model(graph, ctx.source)
        ctx.pruned = infer_model(model)


class _Editor:
    """What fixers share: nodes by name, removed positions, original sizes, private constants."""

    def __init__(self, graph: gs.Graph, removal: Removal, shapes: Mapping[str, Shape]) -> None:
        self.graph = graph
        self.removal = removal
        self.shapes = shapes
        self.nodes = {n.name: n for n in graph.nodes}
        self.names = set(graph.tensors())
        self.owned: dict[tuple[str, int], gs.Constant] = {}

    def new_size(self, tensor: str, axis: int) -> int:
        return int(self.shapes[tensor][axis]) - self.removal.removed_on(tensor, axis).size

    def own_constant(self, node: gs.Node, index: int) -> gs.Constant:
        """The node's constant input `index`, copied first if anything else reads it too."""
        key = (node.name, index)
        if key in self.owned:
            return self.owned[key]
        const = node.inputs[index]
        if len(const.outputs) > 1 or node.inputs.count(const) > 1:
            const = gs.Constant(self.fresh(f"{const.name}__{node.name}"), np.array(const.values))
            node.inputs[index] = const
        self.owned[key] = const
        return const

    def fresh(self, base: str) -> str:
        name, n = base, 0
        while name in self.names:
            n += 1
            name = f"{base}_{n}"
        self.names.add(name)
        return name

    def set_ints(self, node: gs.Node, attr: str, index: int, values: list[int]) -> None:
        """Write an integer list where this opset keeps it: attribute or constant input."""
        if attr in node.attrs:
            node.attrs[attr] = [int(v) for v in values]
            return
        array = np.array(values, dtype=np.int64)
        if index < len(node.inputs) and node.inputs[index].name:
            const = self.own_constant(node, index)
            const.values = array.astype(np.asarray(const.values).dtype)
            return
        while len(node.inputs) < index:
            node.inputs.append(gs.Variable.empty())
        node.inputs.append(gs.Constant(self.fresh(f"{node.name}_{attr}"), array))


def _fix_shape(editor: _Editor, fix: ShapeFix) -> None:
    if (fix.tensor, fix.axis) not in editor.removal.tensors:
        return
    node = editor.nodes[fix.node]
    index = next(
        i
        for i, t in enumerate(node.inputs)
        if t.name == fix.initializer or editor.owned.get((node.name, i)) is t
    )
    const = editor.own_constant(node, index)
    values = np.array(const.values, copy=True)
    values.reshape(-1)[fix.index] = editor.new_size(fix.tensor, fix.axis)
    const.values = values


def _fix_split(editor: _Editor, fix: SplitFix) -> None:
    removed = editor.removal.removed_on(fix.tensor, fix.axis)
    bounds = np.concatenate([[0], np.cumsum(fix.sizes)])
    sizes = [
        size - int(np.count_nonzero((removed >= a) & (removed < b)))
        for size, a, b in zip(fix.sizes, bounds[:-1], bounds[1:], strict=True)
    ]
    node = editor.nodes[fix.node]
    node.attrs.pop("num_outputs", None)  # opset 18: explicit sizes replace the count
    if editor.graph.opset is not None and editor.graph.opset < 13:
        node.attrs["split"] = sizes
    else:
        editor.set_ints(node, "split", 1, sizes)


def _fix_slice(editor: _Editor, fix: SliceFix) -> None:
    removed = editor.removal.removed_on(fix.tensor, fix.axis)
    start = fix.start - int(np.count_nonzero(removed < fix.start))
    end = fix.end - int(np.count_nonzero(removed < fix.end))
    node = editor.nodes[fix.node]
    for attr, index, value in (("starts", 1, start), ("ends", 2, end)):
        if attr in node.attrs:
            current = list(node.attrs[attr])
        else:
            current = [int(v) for v in np.asarray(node.inputs[index].values).reshape(-1)]
        current[fix.entry] = value
        editor.set_ints(node, attr, index, current)


def _fix_group(editor: _Editor, fix: GroupFix) -> None:
    node = editor.nodes[fix.node]
    node.attrs["group"] = editor.new_size(fix.tensor, fix.axis) // fix.per_group


FIXERS: dict[str, Callable[[_Editor, Fix], None]] = {
    ShapeFix.kind: _fix_shape,
    SplitFix.kind: _fix_split,
    SliceFix.kind: _fix_slice,
    GroupFix.kind: _fix_group,
}
