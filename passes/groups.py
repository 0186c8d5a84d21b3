"""groups: the dependency graph — coupled channel groups, prunable or blocked with a reason."""

from __future__ import annotations

import logging

from onnxprune.depgraph import build_groups
from onnxprune.pipeline import Context, Pass

log = logging.getLogger("onnxprune")


class GroupsPass(Pass):
    name = "groups"
    description = "Build channel groups from the op rule table; block what cannot be proven."
    requires = ("graph", "shapes")
    provides = ("groups",)

    def run(self, ctx: Context) -> None:
        ctx.groups = build_groups(ctx.graph, ctx.shapes)
        prunable = sum(g.prunable for g in ctx.groups)
        log.info("groups: %d found, %d prunable", len(ctx.groups), prunable)
        for g in ctx.groups:
            if not g.prunable:
                log.debug("group %d (%s) blocked: %s", g.id, ", ".join(g.roots), g.blocked)
