"""report: measure the original and pruned models and assemble the report."""

from __future__ import annotations

from onnxprune.pipeline import Context, Param, Pass
from onnxprune.report import build_report, model_costs
from onnxprune.sparsity import sparsity_section


class ReportPass(Pass):
    name = "report"
    description = "Params, MACs, ops and sizes before/after; groups, plan, fidelity, timings."
    params = {
        "command": Param(tuple, (), "the command line, recorded for replay"),
        "options": Param(dict, {}, "the options, recorded for replay"),
        "accelerator": Param(str, "generic-45nm", "profile of the estimate section; None: none"),
    }
    requires = ("source", "original", "pruned", "groups")
    provides = ("report",)

    def run(self, ctx: Context) -> None:
        file_size = ctx.model_path.stat().st_size if ctx.model_path else ctx.source.ByteSize()
        after = model_costs(ctx.pruned, ctx.input_shapes)
        ctx.report = build_report(
            command=self.options["command"],
            options=self.options["options"],
            before=model_costs(ctx.original, ctx.input_shapes),
            after=after,
            file_size_before=file_size,
            groups=ctx.groups,
            plan=ctx.plan,
            fidelity=ctx.fidelity,
            timings=ctx.timings,
            reconstruction=ctx.reconstruction,
            allocation=ctx.allocation,
            sparsity=(
                sparsity_section(ctx.pruned, ctx.sparsity, after["node_macs"])
                if ctx.sparsity is not None
                else None
            ),
        )
        if self.options["accelerator"]:
            from onnxprune.estimate import before_after

            ctx.report["estimate"] = before_after(
                ctx.original, ctx.pruned, self.options["accelerator"], ctx.input_shapes
            )
