"""normalize: weights and shape arithmetic become constants, nodes are named and sorted,
shapes are inferred.

The normalized model is also the reference that fidelity is measured against
in the report's parameter and MAC counts, since weights computed by
ConstantOfShape only count as parameters once folded.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.fold import fold_constants, reshape_output_shapes
from onnxprune.graph import export_model, fix_input_dims, import_graph, infer_shapes, name_nodes
from onnxprune.pipeline import Context, Pass

log = logging.getLogger("onnxprune")


class NormalizePass(Pass):
    name = "normalize"
    description = (
        "Fold Constant/Identity/Cast/ConstantOfShape weights and static shape arithmetic into "
        "initializers, name every node, sort nodes topologically and infer shapes."
    )
    requires = ("source",)
    provides = ("graph", "shapes", "original")

    def run(self, ctx: Context) -> None:
        graph = import_graph(ctx.source)
        # IR < 4 lists initializers among the inputs; they are weights, not inputs.
        graph.inputs = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
        renamed = name_nodes(graph)
        if renamed:
            log.info("normalize: named %d unnamed or duplicate-named nodes", renamed)
        folded = fold_constants(graph)
        model = export_model(graph, ctx.source)
        # Shapes of the model as it is (dynamic dims stay symbolic): only dims static
        # here may be folded, whatever --input-shape says for this run.
        shapes = infer_shapes(fix_input_dims(model, {}, default=None))
        if any(n.op == "Shape" for n in graph.nodes):
            more = fold_constants(graph, shapes)
            if more:
                folded += more
                model = export_model(graph, ctx.source)
                shapes = infer_shapes(fix_input_dims(model, {}, default=None))
        if folded:
            log.info("normalize: folded %d constant-computing nodes into initializers", folded)
        if _complete_shapes(graph, model, shapes):
            shapes = infer_shapes(fix_input_dims(model, {}, default=None))
        ctx.original = model
        if ctx.input_shapes:
            shapes = infer_shapes(fix_input_dims(model, ctx.input_shapes, default=None))
        ctx.shapes = shapes
        ctx.graph = graph


def _complete_shapes(graph: gs.Graph, model: onnx.ModelProto, shapes: dict) -> bool:
    """Record Reshape output shapes that inference missed (run-time targets) as value_info.

    Inference then carries them downstream; they are exact (traced from the target).
    """
    found = reshape_output_shapes(graph, shapes)
    tensors = graph.tensors()
    kept = [v for v in model.graph.value_info if v.name not in found]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept)
    for name, shape in found.items():
        elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(tensors[name].dtype or np.float32))
        dims = [d if isinstance(d, int | str) else None for d in shape]
        model.graph.value_info.append(onnx.helper.make_tensor_value_info(name, elem, dims))
    return bool(found)
