"""Conv family rules: depthwise, grouped, transposed and channel shuffles, each under the oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from tests.graphs import GraphBuilder
from tests.helpers import blocked_reasons, prunable_roots, prune_and_check


def _attr(model: onnx.ModelProto, node: str, name: str):
    n = next(n for n in model.graph.node if n.name == node)
    return next(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == name)


def _dims(model: onnx.ModelProto, init: str) -> list[int]:
    return next(list(i.dims) for i in model.graph.initializer if i.name == init)


def test_depthwise_couples_input_and_output_and_rewrites_group(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.bn(b.conv("x", 3, 8, k=1), 8)])
    x = b.op("Relu", [b.bn(b.conv(x, 8, 8, group=8), 8)])  # depthwise 3x3
    y = b.conv(x, 8, 4, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 6, 6]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1", "Conv_4"]]
    assert _attr(result.model, "Conv_4", "group") == 4
    dw = next(n for n in result.model.graph.node if n.name == "Conv_4")
    assert _dims(result.model, dw.input[1]) == [4, 1, 3, 3]


def test_depthwise_with_channel_multiplier(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 4, k=1)])
    x = b.op("Relu", [b.conv(x, 4, 8, group=4)])  # each input channel makes 2 outputs
    y = b.conv(x, 8, 2, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 5, 5]}, [y]), tmp_path)
    group = next(g for g in result.groups if g.roots[0] == "Conv_1")
    assert group.prunable and group.channels == 4
    dw_out = next(t for t in group.tensors if t.tensor.startswith("conv3"))
    assert dw_out.positions.shape == (4, 2)  # channel c owns outputs 2c, 2c+1
    assert _attr(result.model, "Conv_3", "group") == 2


def test_single_input_channel_conv_is_not_depthwise(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 1, 8)])  # weight [8, 1, 3, 3], group 1: an ordinary conv
    y = b.conv(x, 8, 2)
    result = prune_and_check(b.model({"x": ["N", 1, 4, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]


def test_single_channel_conv_chain_stays_put(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 1, 1)])  # group = C_in = C_out = 1 is not depthwise
    y = b.conv(x, 1, 1)
    result = prune_and_check(b.model({"x": ["N", 1, 4, 4]}, [y]), tmp_path)
    assert not result.plan.groups


def test_grouped_conv_prunes_one_channel_per_group(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8, k=1)])
    x = b.op("Relu", [b.bn(b.conv(x, 8, 8, group=2), 8)])
    y = b.conv(x, 8, 2, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 5, 5]}, [y]), tmp_path)
    stem = next(g for g in result.groups if g.roots == ["Conv_1"])
    assert stem.prunable and stem.channels == 4  # units {c, c+4}: one in each conv group
    assert stem.tensors[0].positions.tolist()[0] == [0, 4]
    grouped = next(g for g in result.groups if g.roots[0] == "Conv_3")
    assert grouped.prunable and grouped.channels == 4
    assert _attr(result.model, "Conv_3", "group") == 2  # group count unchanged
    w = next(n for n in result.model.graph.node if n.name == "Conv_3").input[1]
    assert _dims(result.model, w) == [4, 2, 3, 3]


def test_grouped_conv_fed_by_uneven_concat_blocks(tmp_path):
    """Channels 0-2 come from one conv and 3-5 from another; group=2 slabs are [0-2], [3-5]:
    one channel per slab means one from each conv, which different groups decide."""
    b = GraphBuilder()
    a = b.conv("x", 3, 3, k=1)
    c = b.conv("x", 3, 3, k=1)
    x = b.op("Concat", [a, c], axis=1)
    y = b.conv(b.op("Relu", [b.conv(x, 6, 4, group=2)]), 4, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert any("groups" in r and "Conv_4" in r for r in blocked_reasons(result)), blocked_reasons(
        result
    )


@pytest.mark.parametrize("groups", [1, 2])
def test_conv_transpose_as_root_and_consumer(tmp_path, groups):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8, k=1)])
    w = b.weight([8, 6 // groups, 2, 2])
    t = b.op("ConvTranspose", [x, w, b.weight([6])], strides=[2, 2], group=groups)
    y = b.conv(b.op("Relu", [b.bn(t, 6)]), 6, 2, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 3, 3]}, [y]), tmp_path)
    roots = prunable_roots(result)
    assert ["Conv_1"] in roots and any(r[0].startswith("ConvTranspose") for r in roots)
    tw = _dims(result.model, w)
    assert tw[0] < 8 and tw[1] < 6 // groups


def test_depthwise_conv_transpose(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 4, k=1)])
    t = b.op("ConvTranspose", [x, b.weight([4, 1, 2, 2]), b.weight([4])], strides=[2, 2], group=4)
    y = b.conv(b.op("Relu", [t]), 4, 2, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 3, 3]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1", "ConvTranspose_3"]]
    assert _attr(result.model, "ConvTranspose_3", "group") == 2


def _shuffle(b: GraphBuilder, x: str, c: int, g: int, hw: int) -> str:
    r = b.op("Reshape", [x, b.const(np.array([0, g, c // g, hw, hw], dtype=np.int64))])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    return b.op("Reshape", [t, b.const(np.array([0, c, hw, hw], dtype=np.int64))])


def test_shufflenet_unit_maps_the_shuffle_exactly(tmp_path):
    """GConv(g=2) -> shuffle -> depthwise -> GConv(g=2): units of one channel per group
    follow the shuffle's permutation, and merge until the second GConv's groups stay equal."""
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8, k=1)])
    x = b.op("Relu", [b.bn(b.conv(x, 8, 8, k=1, group=2), 8)])
    x = _shuffle(b, x, 8, 2, 4)
    x = b.bn(b.conv(x, 8, 8, group=8), 8)
    y = b.conv(b.op("Relu", [b.conv(x, 8, 8, k=1, group=2)]), 8, 2, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    bottleneck = next(g for g in result.groups if g.roots[0] == "Conv_3")
    assert bottleneck.prunable, bottleneck.blocked
    assert bottleneck.channels == 2  # units of 4 channels: 2 per conv group, twice
    reshape = [n for n in result.model.graph.node if n.op_type == "Reshape"]
    targets = {
        i.name: onnx.numpy_helper.to_array(i).tolist() for i in result.model.graph.initializer
    }
    assert targets[reshape[0].input[1]][2] == 2 and targets[reshape[1].input[1]][1] == 4


def test_shuffle_of_plain_channels_prunes_in_units(tmp_path):
    b = GraphBuilder()
    x = b.conv("x", 3, 8, k=1)
    y = b.conv(_shuffle(b, x, 8, 2, 4), 8, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    group = next(g for g in result.groups if g.roots == ["Conv_1"])
    assert group.prunable and group.tensors[0].positions.shape == (4, 2)


def test_reshape_that_tears_a_channel_blocks(tmp_path):
    """[N, 3, 2] -> [N, 2, 3]: channel 1 lands on two rows and two columns."""
    b = GraphBuilder()
    h = b.op("MatMul", ["x", b.weight([4, 3])])  # [N, 2, 3]
    t = b.op("Transpose", [h], perm=[0, 2, 1])  # channels on axis 1: [N, 3, 2]
    r = b.op("Reshape", [t, b.const(np.array([0, 2, 3], dtype=np.int64))])
    y = b.op("MatMul", [r, b.weight([3, 2])])
    result = prune_and_check(b.model({"x": ["N", 2, 4]}, [y]), tmp_path)
    assert any("several axes" in r for r in blocked_reasons(result)), blocked_reasons(result)
