"""AlexNet at Han et al. 2015's per-layer densities, shared by the estimate test and benchmark.

The onnx wheel's light AlexNet has AlexNet's exact layer shapes but constant-fill weights;
this folds it, draws seeded random weights and prunes each layer by magnitude to Han's
kept fraction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnxprune.passes import PASSES
from onnxprune.pipeline import Context, run_pipeline
from onnxprune.unstructured import magnitude_mask

ALEXNET = Path(onnx.__file__).parent / "backend/test/data/light/light_bvlc_alexnet.onnx"
KEPT = {"conv1": 0.84, "conv2": 0.38, "conv3": 0.35, "conv4": 0.37, "conv5": 0.37,
        "fc6": 0.09, "fc7": 0.09, "fc8": 0.25}  # fmt: skip
ALEXNET_WEIGHTS = 60_954_656  # conv1..fc8 weight elements (Han: "61M")


def alexnet_models(seed: int = 0) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(dense, pruned) AlexNet with random weights; pruned per layer to Han's densities."""
    ctx = run_pipeline([PASSES["load"](path=str(ALEXNET)), PASSES["normalize"]()], Context())
    dense, pruned = onnx.ModelProto(), onnx.ModelProto()
    dense.CopyFrom(ctx.original)
    pruned.CopyFrom(ctx.original)
    rng = np.random.default_rng(seed)
    for i, init in enumerate(ctx.original.graph.initializer):
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        w = (rng.standard_normal(tuple(init.dims)) * 0.01).astype(np.float32)
        dense.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, init.name))
        if init.name.endswith("_w_0"):
            w = w * magnitude_mask(w, 1.0 - KEPT[init.name.split("_")[0]])
        pruned.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, init.name))
    return dense, pruned
