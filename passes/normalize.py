"""normalize: weights become constants, nodes are sorted, shapes are inferred.

The normalized model is also the reference that fidelity is measured against
in the report's parameter and MAC counts, since weights computed by
ConstantOfShape only count as parameters once folded.
"""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from onnxprune.fold import fold_constant_producers
from onnxprune.graph import export_model, fix_input_dims, import_graph, infer_shapes
from onnxprune.pipeline import Context, Pass

log = logging.getLogger("onnxprune")


class NormalizePass(Pass):
    name = "normalize"
    description = (
        "Fold Constant/Identity/Cast/ConstantOfShape weights into initializers, sort nodes "
        "topologically and infer shapes."
    )
    requires = ("source",)
    provides = ("graph", "shapes", "original")

    def run(self, ctx: Context) -> None:
        graph = import_graph(ctx.source)
        # IR < 4 lists initializers among the inputs; they are weights, not inputs.
        graph.inputs = [t for t in graph.inputs if not isinstance(t, gs.Constant)]
        folded = fold_constant_producers(graph)
        if folded:
            log.info("normalize: folded %d constant-producing nodes into initializers", folded)
        ctx.original = export_model(graph, ctx.source)
        analysed = fix_input_dims(ctx.original, ctx.input_shapes, default=None)
        ctx.shapes = infer_shapes(analysed)
        ctx.graph = graph
