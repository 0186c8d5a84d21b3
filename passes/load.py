"""load: read and validate the input model (never modified afterwards)."""

from __future__ import annotations

from pathlib import Path

from onnxprune.modelio import load_model
from onnxprune.pipeline import Context, Param, Pass


class LoadPass(Pass):
    name = "load"
    description = "Read the model, check it with onnx.checker (full check)."
    params = {
        "path": Param(str, None, "path of the input .onnx model"),
        "check": Param(bool, True, "run onnx.checker full check on the input"),
    }
    provides = ("source", "model_path")

    def run(self, ctx: Context) -> None:
        ctx.model_path = Path(self.options["path"])
        ctx.source = load_model(ctx.model_path, check=self.options["check"])
