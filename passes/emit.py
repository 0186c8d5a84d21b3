"""emit: write the pruned model (atomically) and the JSON report."""

from __future__ import annotations

import json
from pathlib import Path

from onnxprune.modelio import atomic_path, save_model
from onnxprune.pipeline import Context, Param, Pass


class EmitPass(Pass):
    name = "emit"
    description = "Write the pruned model and, if asked, the JSON report; atomic writes."
    params = {
        "output": Param(str, None, "path of the pruned model"),
        "report": Param(str, None, "path of the JSON report (optional)"),
    }
    requires = ("pruned", "report")

    def run(self, ctx: Context) -> None:
        ctx.output_path = Path(self.options["output"])
        size = save_model(ctx.pruned, ctx.output_path)
        ctx.report["size_bytes"]["after"] = size
        ctx.report["output"] = str(ctx.output_path)
        if self.options["report"]:
            with atomic_path(self.options["report"]) as tmp:
                tmp.write_text(json.dumps(ctx.report, indent=2, sort_keys=False) + "\n")
