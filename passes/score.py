"""score: per-channel importance of each prunable group under a criterion."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.criteria import CRITERIA, Evidence, get_criterion, score_group
from onnxprune.errors import UsageError
from onnxprune.pipeline import Context, Param, Pass


class ScorePass(Pass):
    name = "score"
    description = "Score every channel of every prunable group."
    params = {
        "criterion": Param(str, "l1", "importance criterion", tuple(sorted(CRITERIA))),
    }
    requires = ("graph", "groups")
    provides = ("scores",)

    def run(self, ctx: Context) -> None:
        criterion = get_criterion(self.options["criterion"])
        if criterion.needs == "stats" and ctx.stats is None:
            raise UsageError(f"criterion '{criterion.name}' needs the stats pass before score")
        if criterion.needs in ("saliency", "greedy") and ctx.saliency is None:
            raise UsageError(f"criterion '{criterion.name}' needs the gradients pass before score")
        constants = {
            name: np.asarray(t.values)
            for name, t in ctx.graph.tensors().items()
            if isinstance(t, gs.Constant)
        }
        stats, saliency = ctx.stats or {}, ctx.saliency or {}
        ctx.scores = {
            g.id: score_group(
                g, constants, criterion, Evidence(stats.get(g.id), saliency.get(g.id))
            )
            for g in ctx.groups
            if g.prunable
        }
