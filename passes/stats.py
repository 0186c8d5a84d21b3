"""stats: per-channel activation statistics of every prunable group on calibration data."""

from __future__ import annotations

import logging

from onnxprune.pipeline import Context, Pass
from onnxprune.stats import collect

log = logging.getLogger("onnxprune")


class StatsPass(Pass):
    name = "stats"
    description = "Mean, mean |x|, energy and APoZ per channel, reduced inside onnxruntime."
    requires = ("original", "graph", "groups", "calibration")
    provides = ("stats",)

    def run(self, ctx: Context) -> None:
        consumer_inputs = {n.name: n.inputs[0].name for n in ctx.graph.nodes if n.inputs}
        prunable = [g for g in ctx.groups if g.prunable]
        ctx.stats = collect(
            ctx.original, prunable, consumer_inputs, ctx.shapes, ctx.calibration.batches("stats")
        )
        missing = [g.id for g in prunable if g.id not in ctx.stats]
        if missing:
            log.warning("stats: no watched tensor for groups %s", missing)
