"""surgery: remove the planned channels — slice parameters, rewrite shape constants, re-infer."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.graph import export_model
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
        _apply_shape_fixes(graph, removal, ctx.shapes)
        # Intermediate shapes are stale now; inputs and outputs keep theirs (never narrowed).
        boundary = {t.name for t in (*graph.inputs, *graph.outputs)}
        for tensor in tensors.values():
            if isinstance(tensor, gs.Variable) and tensor.name not in boundary:
                tensor.shape = None
        model = export_model(graph, ctx.source)
        ctx.pruned = onnx.shape_inference.infer_shapes(model, data_prop=True)


def _apply_shape_fixes(graph: gs.Graph, removal: Removal, shapes: dict) -> None:
    tensors = graph.tensors()
    nodes = {n.name: n for n in graph.nodes}
    for fix in removal.shape_fixes:
        removed = removal.tensors.get((fix.tensor, fix.axis))
        if removed is None:
            continue
        new_size = int(shapes[fix.tensor][fix.axis]) - removed.size
        node = nodes[fix.node]
        const = tensors[fix.initializer]
        values = np.array(const.values, copy=True)
        values.reshape(-1)[fix.index] = new_size
        if len(const.outputs) > 1:  # shared target: give this node its own copy
            own = gs.Constant(f"{fix.initializer}__{fix.node}", values)
            node.inputs[node.inputs.index(const)] = own
        else:
            const.values = values
