"""Probe models: copies of a model that expose intermediate tensors and take weights as inputs.

Several passes run one onnxruntime session over the calibration data while reading
activations (statistics, re-fits, sequential sparsification); feeding the weights
being changed as inputs lets one session serve every update.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import onnx
from onnx import helper


def probe_model(
    model: onnx.ModelProto, feeds: Sequence[str] = (), fetch: Sequence[str] = ()
) -> onnx.ModelProto:
    """A copy whose initializers `feeds` become graph inputs and tensors `fetch` outputs."""
    probe = copy.deepcopy(model)
    inits = {i.name: i for i in probe.graph.initializer}
    for name in feeds:
        init = inits[name]
        probe.graph.input.append(helper.make_tensor_value_info(name, init.data_type, init.dims))
        probe.graph.initializer.remove(init)
    existing = {o.name for o in probe.graph.output}
    for name in fetch:
        if name not in existing:
            probe.graph.output.append(helper.make_empty_tensor_value_info(name))
            existing.add(name)
    return probe
