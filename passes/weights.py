"""weights: connection pruning — zero single weights of Conv/ConvTranspose/Gemm/MatMul.

Runs on the structurally pruned (and reconstructed) model, so `--filters` and `--weights`
combine; the verify pass then measures fidelity of the result against the original.
"""

from __future__ import annotations

import logging

from onnxprune.connections import CRITERIA, WeightsConfig, prune_connections
from onnxprune.pipeline import Context, Param, Pass
from onnxprune.unstructured import as_nm

log = logging.getLogger("onnxprune")


class WeightsPass(Pass):
    name = "weights"
    description = (
        "Zero a fraction of each layer's weights (or N:M) by magnitude, global magnitude, "
        "Wanda or OBS (SparseGPT), layer by layer on the already-sparse model."
    )
    params = {
        "sparsity": Param(float, 0.0, "fraction of each layer's weights set to zero, in [0, 1)"),
        "criterion": Param(str, "magnitude", "which weights go", CRITERIA),
        "nm": Param(str, None, "N:M pattern: keep N of every M consecutive inputs"),
        "layer_ratio": Param(tuple, (), "(glob, sparsity) per-layer overrides, first match wins"),
        "exclude": Param(tuple, (), "globs of node/weight names left dense"),
        "sequential": Param(bool, True, "statistics from the already-sparsified model"),
        "percdamp": Param(float, 0.01, "OBS damping relative to mean diag(XᵀX)"),
        "blocksize": Param(int, 128, "OBS column block size"),
    }
    requires = ("pruned", "calibration")
    provides = ("pruned", "sparsity")

    def run(self, ctx: Context) -> None:
        o = self.options
        config = WeightsConfig(
            sparsity=o["sparsity"],
            criterion=o["criterion"],
            nm=as_nm(o["nm"]),
            layer_ratio=tuple(o["layer_ratio"]),
            exclude=tuple(o["exclude"]),
            sequential=o["sequential"],
            percdamp=o["percdamp"],
            blocksize=o["blocksize"],
        )
        batches = ctx.calibration.batches if ctx.calibration is not None else None
        ctx.pruned, ctx.sparsity = prune_connections(ctx.pruned, config, batches)
        if not ctx.sparsity["layers"]:
            log.warning("--weights: no layer was pruned (see report 'sparsity.skipped')")
        for row in ctx.sparsity["skipped"]:
            log.info("weights: %s left dense: %s", row["node"], row["reason"])
