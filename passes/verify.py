"""verify: the pruned model must be valid, load in onnxruntime, keep its signature, and
be compared with the original on the calibration inputs. Fidelity is measured and
reported; validity failures stop the run before anything is written."""

from __future__ import annotations

import onnx

from onnxprune.errors import VerificationError
from onnxprune.fidelity import compare, session
from onnxprune.graph import real_inputs, value_shape
from onnxprune.pipeline import Context, Pass


def signature(model: onnx.ModelProto) -> list[tuple]:
    """(kind, name, elem type, shape) of every real input and every output."""
    rows = []
    for kind, values in (("input", real_inputs(model)), ("output", model.graph.output)):
        for v in values:
            rows.append((kind, v.name, v.type.tensor_type.elem_type, value_shape(v)))
    return rows


class VerifyPass(Pass):
    name = "verify"
    description = "onnx.checker, onnxruntime load, I/O signature, fidelity vs the original."
    requires = ("source", "pruned", "calibration")
    provides = ("fidelity",)

    def run(self, ctx: Context) -> None:
        try:
            onnx.checker.check_model(ctx.pruned, full_check=True)
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
            raise VerificationError(f"pruned model fails onnx.checker: {exc}") from exc
        before, after = signature(ctx.source), signature(ctx.pruned)
        if before != after:
            changed = [a for a, b in zip(after, before, strict=False) if a != b] or after
            raise VerificationError(f"pruned model changed its I/O signature: {changed[:2]}")
        reference = session(ctx.source)
        candidate = session(ctx.pruned)
        labels = ctx.calibration.label_batches() if ctx.calibration.labels is not None else None
        results = compare(reference, candidate, ctx.calibration.batches("verify"), labels)
        ctx.fidelity = {
            "inputs": ctx.calibration.source,
            "samples": ctx.calibration.samples,
            "outputs": [r.to_json() for r in results],
        }
