"""Blocks real exporters emit: squeeze-excitation, decomposed activations, normalizations,
transformer FFN/attention, recurrent layers and control flow — under the oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.graphs import GraphBuilder
from tests.helpers import blocked_reasons, prunable_roots, prune_and_check


def _scalar(b: GraphBuilder, v: float) -> str:
    return b.const(np.array(v, dtype=np.float32))


def _hardswish(b: GraphBuilder, x: str, opset: int) -> str:
    """x * clip(x + 3, 0, 6) / 6, as exporters without a HardSwish op write it."""
    shifted = b.op("Add", [x, _scalar(b, 3.0)])
    if opset < 11:
        clipped = b.op("Clip", [shifted], min=0.0, max=6.0)
    else:
        clipped = b.op("Clip", [shifted, _scalar(b, 0.0), _scalar(b, 6.0)])
    return b.op("Mul", [x, b.op("Div", [clipped, _scalar(b, 6.0)])])


@pytest.mark.parametrize("opset", [9, 13])
def test_decomposed_hardswish_and_silu(tmp_path, opset):
    b = GraphBuilder()
    x = _hardswish(b, b.conv("x", 3, 8), opset)
    x = b.conv(x, 8, 8)
    x = b.op("Mul", [x, b.op("Sigmoid", [x])])  # SiLU
    y = b.conv(x, 8, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y], opset=opset), tmp_path)
    assert len(prunable_roots(result)) == 2


@pytest.mark.parametrize("gate", ["HardSigmoid", "Sigmoid"])
def test_squeeze_excitation(tmp_path, gate):
    """GlobalAveragePool -> Conv -> act -> Conv -> gate -> Mul with the feature map."""
    b = GraphBuilder()
    x = b.op("Relu", [b.bn(b.conv("x", 3, 8), 8)])
    s = b.op("GlobalAveragePool", [x])
    s = b.op("Relu", [b.conv(s, 8, 4, k=1)])
    s = b.op(gate, [b.conv(s, 4, 8, k=1)])
    y = b.conv(b.op("Mul", [x, s]), 8, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 5, 5]}, [y]), tmp_path)
    roots = prunable_roots(result)
    assert ["Conv_1", "Conv_7"] in roots  # feature map and excitation coupled by the Mul
    assert ["Conv_5"] in roots  # the squeeze channels prune on their own


def test_gelu_ffn_between_two_matmuls(tmp_path):
    """Transformer FFN: hidden neurons prune; the residual stream meets LayerNorm and blocks."""
    b = GraphBuilder()
    d, hidden = 4, 16
    h = b.op("Add", [b.op("MatMul", ["x", b.weight([d, hidden])]), b.weight([hidden])])
    g = b.op("Div", [h, _scalar(b, 1.4142135)])
    g = b.op(
        "Mul", [b.op("Mul", [h, b.op("Add", [b.op("Erf", [g]), _scalar(b, 1.0)])]), _scalar(b, 0.5)]
    )
    out = b.op("Add", [b.op("MatMul", [g, b.weight([hidden, d])]), b.weight([d])])
    res = b.op("Add", ["x", out])
    y = b.op("LayerNormalization", [res, b.weight([d]), b.weight([d])], axis=-1)
    result = prune_and_check(b.model({"x": ["N", 3, d]}, [y]), tmp_path)
    assert prunable_roots(result) == [["MatMul_1"]]
    ffn = result.groups[0]
    assert ffn.channels == hidden and len(result.plan.groups[0].keep) == hidden // 2


def test_layernorm_over_hidden_blocks_with_reason(tmp_path):
    b = GraphBuilder()
    h = b.op("MatMul", ["x", b.weight([4, 8])])
    n = b.op("LayerNormalization", [h, b.weight([8]), b.weight([8])], axis=-1)
    y = b.op("MatMul", [n, b.weight([8, 2])])
    result = prune_and_check(b.model({"x": ["N", 3, 4]}, [y]), tmp_path)
    assert any("LayerNormalization" in r and "channel axis" in r for r in blocked_reasons(result))


def test_attention_blocks_projections_with_reason(tmp_path):
    b = GraphBuilder()
    q = b.op("MatMul", ["x", b.weight([4, 8])])
    k = b.op("MatMul", ["x", b.weight([4, 8])])
    v = b.op("MatMul", ["x", b.weight([4, 8])])
    scores = b.op("Softmax", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 2, 1])])], axis=-1)
    y = b.op("MatMul", [b.op("MatMul", [scores, v]), b.weight([8, 4])])
    result = prune_and_check(b.model({"x": ["N", 3, 4]}, [y]), tmp_path)
    reasons = blocked_reasons(result)
    assert sum("attention" in r for r in reasons) >= 3, reasons


@pytest.mark.parametrize("op", ["InstanceNormalization", "LayerNormalization"])
def test_per_channel_normalizations_prune(tmp_path, op):
    b = GraphBuilder()
    x = b.conv("x", 3, 8)
    if op == "InstanceNormalization":
        x = b.op(op, [x, b.weight([8]), b.weight([8])])
    else:  # over the last (spatial) axis of NCHW: channels are not normalized together
        x = b.op(op, [x, b.weight([4]), b.weight([4])], axis=-1)
    y = b.conv(b.op("Relu", [x]), 8, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]


def test_group_norm_blocks_with_reason(tmp_path):
    b = GraphBuilder()
    x = b.op("GroupNormalization", [b.conv("x", 3, 8), b.weight([8]), b.weight([8])], num_groups=2)
    y = b.conv(x, 8, 2)
    graph = helper.make_graph(  # opset 21 needs IR 10, whose checker wants typed outputs
        b.nodes,
        "gn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", 2, 4, 4])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    result = prune_and_check(model, tmp_path)
    assert any("GroupNormalization" in r for r in blocked_reasons(result))


def test_softmax_over_space_prunes_over_channels_blocks(tmp_path):
    b = GraphBuilder()
    x = b.conv("x", 3, 8)
    a = b.op("Softmax", [x], axis=-1)  # opset 13: along W only
    c = b.op("Softmax", [b.conv("x", 3, 8)], axis=1)
    y = b.op("Add", [b.conv(a, 8, 2), b.conv(c, 8, 2)])
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert ["Conv_1"] in prunable_roots(result)
    assert any("Softmax" in r for r in blocked_reasons(result))


def test_lstm_blocks_its_group_and_the_rest_still_prunes(tmp_path):
    b = GraphBuilder()
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight([4, 6])])])
    lstm_out = b.op(
        "LSTM",
        [h, b.weight([1, 4 * 5, 6]), b.weight([1, 4 * 5, 5])],
        n_out=1,
        hidden_size=5,
    )
    side = b.op(
        "MatMul", [b.op("Relu", [b.op("MatMul", ["x", b.weight([4, 6])])]), b.weight([6, 5])]
    )
    y = b.op("Add", [b.op("Squeeze", [lstm_out, b.const(np.array([1], dtype=np.int64))]), side])
    result = prune_and_check(b.model({"x": [3, 2, 4]}, [y]), tmp_path)
    assert any("recurrent" in r for r in blocked_reasons(result))
    assert prunable_roots(result) == [["MatMul_4"]]


def test_tensor_read_inside_if_blocks(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 4)])
    branch = helper.make_graph(
        [helper.make_node("Identity", [x], ["branch_out"])],
        "branch",
        [],
        [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)],
    )
    cond = b.const(np.array(True))
    picked = b.op("If", [cond], then_branch=branch, else_branch=branch)
    y = b.conv(picked, 4, 2)
    other = b.conv(b.op("Relu", [b.conv("x", 3, 4)]), 4, 2)
    model = b.model({"x": ["N", 3, 4, 4]}, [b.op("Add", [y, other])])
    result = prune_and_check(model, tmp_path)
    assert any("subgraph" in r for r in blocked_reasons(result))
    assert prunable_roots(result) == [["Conv_5"]]


def test_weights_behind_constant_ops_are_folded(tmp_path):
    """Paddle writes biases as Reshape(bias, Constant); DenseNet scales as Unsqueeze(w)."""
    b = GraphBuilder()
    bias = b.op("Reshape", [b.weight([8]), b.const(np.array([1, 8, 1, 1], dtype=np.int64))])
    scale = b.op("Unsqueeze", [b.weight([8]), b.const(np.array([1, 2], dtype=np.int64))])
    x = b.op("Add", [b.op("Mul", [b.conv("x", 3, 8, bias=False), scale]), bias])
    y = b.conv(b.op("Relu", [x]), 8, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_3"]]
    assert not any(n.op_type in ("Reshape", "Unsqueeze") for n in result.model.graph.node)
    assert isinstance(result.model, onnx.ModelProto)
