"""reconstruct: re-fit every layer that lost input channels by sequential least squares."""

from __future__ import annotations

import logging

import numpy as np

from onnxprune.pipeline import Context, Param, Pass
from onnxprune.reconstruct import reconstruct
from onnxprune.removal import resolve

log = logging.getLogger("onnxprune")


class ReconstructPass(Pass):
    name = "reconstruct"
    description = (
        "Fold BatchNorm into re-fit layers and solve ridge least squares, layer by layer, "
        "so each matches the dense model on the calibration inputs."
    )
    params = {
        "damping": Param(float, 1e-3, "ridge λ relative to mean diag(XᵀX)"),
        "progress": Param(bool, True, "show a progress bar on a terminal"),
    }
    requires = ("pruned", "original", "groups", "plan", "calibration")
    provides = ("pruned",)

    def run(self, ctx: Context) -> None:
        removal = resolve(ctx.groups, ctx.plan)
        pruned_ids = {g.group for g in ctx.plan.groups if g.removed}
        layer_names = {
            p.node for g in ctx.groups if g.id in pruned_ids for p in g.params if p.role == "in"
        }
        if not layer_names:
            return
        sizes = {name: pos for (name, _axis), pos in removal.tensors.items()}
        axes = {name: axis for (name, axis) in removal.tensors}
        dense_dims = ctx.shapes

        def kept(tensor: str) -> tuple[int, np.ndarray] | None:
            removed = sizes.get(tensor)
            if removed is None:
                return None
            axis = axes[tensor]
            size = int(dense_dims[tensor][axis])
            return axis, np.setdiff1d(np.arange(size), removed)

        model, fits = reconstruct(
            ctx.pruned,
            ctx.original,
            layer_names,
            kept,
            ctx.calibration.batches,
            rel_damping=self.options["damping"],
            progress=self.options["progress"],
        )
        ctx.pruned = model
        ctx.reconstruction = [
            {
                "node": f.node,
                "rows": f.rows,
                "columns": f.columns,
                "damping": f.damping,
                "target": f.target,
                "relative_error_before": round(f.error_before, 6),
                "relative_error_after": round(f.error_after, 6),
            }
            for f in fits
        ]
        for f in fits:
            log.info("reconstruct %-40s error %.4f -> %.4f", f.node, f.error_before, f.error_after)
