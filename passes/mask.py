"""mask: the same plan applied by zeroing instead of removing (--mask-only).

Every pruned channel is zeroed where it is read: the input-channel slices of each
consuming layer's weight. Shapes stay as they were, so the result is the reference
that the pruned model must equal.
"""

from __future__ import annotations

import numpy as np

from onnxprune.graph import export_model
from onnxprune.pipeline import Context, Pass
from onnxprune.removal import resolve


class MaskPass(Pass):
    name = "mask"
    description = "Zero pruned channels at their consumers, keeping all shapes."
    requires = ("graph", "groups", "plan", "source")
    provides = ("pruned",)

    def run(self, ctx: Context) -> None:
        removal = resolve(ctx.groups, ctx.plan)
        tensors = ctx.graph.tensors()
        for key, positions in removal.params.items():
            if removal.roles[key] != "in":
                continue
            name, axis = key
            values = np.array(tensors[name].values, copy=True)
            index = [slice(None)] * values.ndim
            index[axis] = positions
            values[tuple(index)] = 0
            tensors[name].values = values
        ctx.pruned = export_model(ctx.graph, ctx.source)
