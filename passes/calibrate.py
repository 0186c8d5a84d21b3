"""calibrate: the inputs used to verify, score and repair the model."""

from __future__ import annotations

import logging

from onnxprune.calib import Calibration, input_specs, open_calibration, random_inputs
from onnxprune.errors import UsageError
from onnxprune.pipeline import Context, Param, Pass

log = logging.getLogger("onnxprune")


class CalibratePass(Pass):
    name = "calibrate"
    description = (
        "Calibration inputs from a .npz, a folder of .npy, a Python load_data() script, "
        "or seeded random data."
    )
    params = {
        "calib": Param(str, None, ".npz / folder / script.py[:function] (first axis = samples)"),
        "labels": Param(str, None, ".npy of integer labels aligned with the samples"),
        "samples": Param(int, None, "samples to use; None: 256 from --calib, 32 random"),
        "batch_size": Param(int, 32, "samples per onnxruntime run"),
        "seed": Param(int, 0, "seed for random inputs"),
    }
    requires = ("source",)
    provides = ("calibration",)

    def run(self, ctx: Context) -> None:
        samples, batch = self.options["samples"], self.options["batch_size"]
        if samples is None:
            # Random inputs only check validity; real data drives scoring and repair.
            samples = 256 if self.options["calib"] else 32
        if samples is not None and samples < 1:
            raise UsageError(f"--calib-samples must be at least 1, got {samples}")
        if batch < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch}")
        specs = input_specs(ctx.source, ctx.input_shapes)
        fixed_batch = {s.shape[0] for s in specs if s.shape and isinstance(s.shape[0], int)}
        if fixed_batch:
            batch = fixed_batch.pop()  # the model takes exactly this many samples per run
            samples = max(batch, samples // batch * batch)
        if self.options["calib"]:
            ctx.calibration = open_calibration(
                self.options["calib"], specs, batch, samples, self.options["labels"]
            )
            return
        if self.options["labels"]:
            raise UsageError("--labels needs --calib: labels must match real inputs")
        log.warning(
            "no --calib given: using %d random inputs; fidelity numbers then say little "
            "about accuracy on real data",
            samples,
        )
        seed = self.options["seed"]
        ctx.calibration = Calibration.from_arrays(
            random_inputs(specs, samples, seed), batch, f"random(seed={seed})", specs
        )
