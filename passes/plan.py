"""plan: how many channels each group keeps, and which — or a plan replayed from JSON."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from onnxprune.errors import UsageError
from onnxprune.pipeline import Context, Param, Pass
from onnxprune.plan import Plan, make_plan, unmatched_patterns

log = logging.getLogger("onnxprune")


class PlanPass(Pass):
    name = "plan"
    description = "Choose kept channels per group (uniform ratio), honouring --exclude."
    params = {
        "ratio": Param(float, 0.0, "fraction of each group's channels to remove, in [0, 1)"),
        "criterion": Param(str, "l1", "criterion name, recorded in the plan"),
        "round_to": Param(int, 1, "keep a multiple of this many channels per group"),
        "exclude": Param(tuple, (), "glob patterns of node names never pruned"),
        "replay": Param(str, None, "a report or plan JSON whose kept channels are reused"),
    }
    requires = ("groups",)
    provides = ("plan",)

    def run(self, ctx: Context) -> None:
        ratio, round_to = self.options["ratio"], self.options["round_to"]
        if not 0.0 <= ratio < 1.0:
            raise UsageError(f"--filters must be in [0, 1), got {ratio}")
        if round_to < 1:
            raise UsageError(f"--round-to must be at least 1, got {round_to}")
        exclude = tuple(self.options["exclude"])
        node_names = [n.name for n in ctx.graph.nodes]
        for pattern in unmatched_patterns(node_names, exclude):
            log.warning("--exclude '%s' matches no node", pattern)
        if self.options["replay"]:
            ctx.plan = self._replay(ctx, Path(self.options["replay"]))
            return
        if ctx.scores is None:
            raise UsageError("no scores: the plan needs the score pass or --plan")
        ctx.plan = make_plan(
            ctx.groups,
            ctx.scores,
            ratio,
            self.options["criterion"],
            round_to,
            exclude,
            ratios=ctx.ratios,
        )

    @staticmethod
    def _replay(ctx: Context, path: Path) -> Plan:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UsageError(f"cannot read plan {path}: {exc}") from exc
        plan = Plan.from_json(data.get("plan", data))
        by_id = {g.id: g for g in ctx.groups}
        for gplan in plan.groups:
            group = by_id.get(gplan.group)
            if group is None or group.roots != gplan.roots or group.channels != gplan.channels:
                raise UsageError(
                    f"plan {path} does not fit this model (group {gplan.group}, roots "
                    f"{gplan.roots}); it was made for another model"
                )
            if not group.prunable:
                raise UsageError(f"plan {path} prunes group {gplan.group}, blocked here")
            if any(not 0 <= k < group.channels for k in gplan.keep) or not gplan.keep:
                raise UsageError(f"plan {path}: group {gplan.group} has invalid kept indices")
        return plan
