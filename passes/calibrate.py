"""calibrate: the inputs used to verify (and later to score and repair) the model."""

from __future__ import annotations

import logging

from onnxprune.calib import Calibration, input_specs, load_npz, random_inputs
from onnxprune.errors import UsageError
from onnxprune.pipeline import Context, Param, Pass

log = logging.getLogger("onnxprune")


class CalibratePass(Pass):
    name = "calibrate"
    description = "Load calibration inputs from a .npz, or make seeded random ones."
    params = {
        "calib": Param(str, None, ".npz keyed by input name (first axis = samples)"),
        "samples": Param(int, 64, "number of calibration samples to use"),
        "batch_size": Param(int, 32, "samples per onnxruntime run"),
        "seed": Param(int, 0, "seed for random inputs"),
    }
    requires = ("source",)
    provides = ("calibration",)

    def run(self, ctx: Context) -> None:
        samples, batch = self.options["samples"], self.options["batch_size"]
        if samples is not None and samples < 1:
            raise UsageError(f"--calib-samples must be at least 1, got {samples}")
        if batch < 1:
            raise UsageError(f"--batch-size must be at least 1, got {batch}")
        specs = input_specs(ctx.source, ctx.input_shapes)
        path = self.options["calib"]
        if path:
            arrays = load_npz(path, specs, samples)
            source = str(path)
        else:
            log.warning(
                "no --calib given: using %d random inputs; fidelity numbers then say little "
                "about accuracy on real data",
                samples,
            )
            arrays = random_inputs(specs, samples, self.options["seed"])
            source = f"random(seed={self.options['seed']})"
        fixed_batch = {s.shape[0] for s in specs if isinstance(s.shape[0], int)}
        if fixed_batch:
            batch = fixed_batch.pop()  # the model takes exactly this many samples per run
            count = next(iter(arrays.values())).shape[0] // batch * batch
            if count == 0:
                raise UsageError(f"the model's batch size is fixed at {batch}: give more samples")
            arrays = {k: v[:count] for k, v in arrays.items()}
        ctx.calibration = Calibration(arrays, batch, source)
