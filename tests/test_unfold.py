"""unfold must turn a Conv into an exact matrix product (checked against onnxruntime)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.unfold import Conv2dGeometry, rows_of, unfold
from tests.graphs import GraphBuilder
from tests.helpers import run


@pytest.mark.parametrize(
    "attrs",
    [
        {"pads": [1, 1, 1, 1]},
        {"strides": [2, 2], "pads": [1, 0, 1, 0]},
        {"dilations": [2, 2], "pads": [2, 2, 2, 2]},
        {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
        {"auto_pad": "SAME_LOWER"},
        {"auto_pad": "VALID", "strides": [1, 2]},
    ],
)
def test_unfold_matches_conv(attrs):
    b = GraphBuilder(seed=4)
    w = b.weight([5, 3, 3, 3], "w")
    bias = b.weight([5], "b")
    y = b.op("Conv", ["x", w, bias], **attrs)
    model = b.model({"x": [2, 3, 7, 6]}, [y])
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 6)).astype(np.float32)
    expected = run(model, {"x": x})[0]
    weights = {i.name: i for i in model.graph.initializer}
    from onnx import numpy_helper

    wv = numpy_helper.to_array(weights["w"]).reshape(5, -1)
    bv = numpy_helper.to_array(weights["b"])
    geo = Conv2dGeometry.from_attrs(attrs, (3, 3), (7, 6))
    got = unfold(x.astype(np.float64), geo) @ wv.T.astype(np.float64) + bv
    np.testing.assert_allclose(got, rows_of(expected), rtol=1e-5, atol=1e-5)
