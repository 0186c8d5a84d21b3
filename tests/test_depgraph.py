"""Dependency-graph rules on small hand-built graphs, each checked by the masking oracle."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune import prune
from tests.graphs import GraphBuilder, save
from tests.helpers import assert_outputs_close, masked_original, run


def _oracle(tmp_path, model, ratio=0.5, **kw):
    path = save(model, tmp_path / "m.onnx")
    pruned = prune(path, filters=ratio, write=False, **kw)
    shape = [d.dim_value or 2 for d in model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    feeds = {model.graph.input[0].name: x}
    if pruned.plan.groups:
        oracle = masked_original(pruned.reference, pruned.groups, pruned.plan)
        assert_outputs_close(run(oracle, feeds), run(pruned.model, feeds))
    return pruned


def _reasons(result) -> list[str]:
    return [g.blocked for g in result.groups if g.blocked]


def test_conv_bn_flatten_gemm(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.bn(b.conv("x", 3, 8), 8)])
    x = b.op("Flatten", [b.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])])
    y = b.gemm(b.op("Relu", [b.gemm(x, 8 * 2 * 2, 6)]), 6, 3)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    pruned = {g.roots[0]: len(g.keep) for g in result.plan.groups}
    assert pruned == {"Conv_1": 4, "Gemm_6": 3}
    gemm_w = next(i for i in result.model.graph.initializer if i.name == "w6")
    assert list(gemm_w.dims) == [3, 4 * 2 * 2]  # transB: [out, in]: 4 channels x 4 pixels


def test_reshape_target_is_rewritten(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8)])
    target = b.const(np.array([-1, 8 * 16], dtype=np.int64), "target")
    y = b.gemm(b.op("Reshape", [x, target]), 8 * 16, 5, trans_b=0)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    new_target = next(i for i in result.model.graph.initializer if i.name == "target")
    assert list(onnx_array(new_target)) == [-1, 4 * 16]


def onnx_array(tensor):
    from onnx import numpy_helper

    return numpy_helper.to_array(tensor)


def test_transpose_then_matmul(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 6, k=1)])
    t = b.op("Transpose", [x], perm=[0, 2, 3, 1])  # NHWC: channels last
    y = b.op("MatMul", [t, b.weight([6, 4])])
    y = b.op("Transpose", [y], perm=[0, 3, 1, 2])
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 2, 2]}, [y]))
    assert [g.roots for g in result.plan.groups] == [["Conv_1"]]


def test_residual_add_couples_both_convs(tmp_path):
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 3, 8)])
    c = b.conv(a, 8, 8)
    s = b.op("Relu", [b.op("Add", [a, c])])
    y = b.conv(s, 8, 2, k=1)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    groups = [g for g in result.groups if g.prunable]
    assert len(groups) == 1 and set(groups[0].roots) == {"Conv_1", "Conv_3"}


def test_elementwise_constant_with_channel_axis_is_sliced(tmp_path):
    b = GraphBuilder()
    x = b.conv("x", 3, 8)
    scale = b.weight([1, 8, 1, 1], "scale")
    x = b.op("Mul", [x, scale])
    y = b.conv(b.op("Add", [x, b.const(np.float32(0.5))]), 8, 2)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    dims = next(list(i.dims) for i in result.model.graph.initializer if i.name == "scale")
    assert dims == [1, 4, 1, 1]


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (lambda b: b.conv(b.op("Softmax", [b.conv("x", 3, 8)], axis=1), 8, 2), "Softmax"),
        (lambda b: b.conv(b.op("LRN", [b.conv("x", 3, 8)], size=3), 8, 2), "LRN"),
        (
            lambda b: b.op("ReduceMean", [b.conv("x", 3, 8)], axes=[1], keepdims=1),
            "reduces over the channel axis",
        ),
        (lambda b: b.conv("x", 3, 8), "graph output"),
    ],
)
def test_blocked_with_reason(tmp_path, build, reason):
    b = GraphBuilder()
    y = build(b)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    reasons = _reasons(result)
    assert any(reason in r for r in reasons), reasons


def test_shared_weight_blocks(tmp_path):
    b = GraphBuilder()
    w = b.weight([8, 3, 3, 3], "shared")
    x1 = b.op("Conv", ["x", w], pads=[1, 1, 1, 1])
    x2 = b.op("Conv", ["x", w], pads=[1, 1, 1, 1])
    y = b.conv(b.op("Add", [x1, x2]), 8, 2)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    assert any("shared" in r for r in _reasons(result))
    assert not result.plan.groups


def test_channel_shuffle_is_mapped_exactly_not_guessed(tmp_path):
    """Reshape->Transpose->Reshape moves channel j of group i to j*g + i: units of one
    channel per group follow that permutation exactly (and the oracle proves it)."""
    b = GraphBuilder()
    x = b.conv("x", 3, 8)
    r = b.op("Reshape", [x, b.const(np.array([0, 2, 4, 4, 4], dtype=np.int64))])
    t = b.op("Transpose", [r], perm=[0, 2, 1, 3, 4])
    s = b.op("Reshape", [t, b.const(np.array([0, 8, 4, 4], dtype=np.int64))])
    y = b.conv(s, 8, 2)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    group = next(g for g in result.groups if g.roots == ["Conv_1"])
    assert group.prunable and group.channels == 4
    assert group.tensors[0].positions.tolist()[1] == [1, 5]  # channel 1 of both groups
    shuffled = next(t for t in group.tensors if t.tensor == s)
    assert shuffled.positions.tolist()[1] == [2, 3]  # lands next to each other


def test_weights_in_constant_nodes_and_behind_identity(tmp_path):
    from onnx import helper, numpy_helper

    b = GraphBuilder()
    w = np.random.default_rng(3).standard_normal((8, 3, 3, 3)).astype(np.float32)
    b.nodes.append(
        helper.make_node("Constant", [], ["wc"], value=numpy_helper.from_array(w), name="const_w")
    )
    wi = b.op("Identity", ["wc"])
    x = b.op("Relu", [b.op("Conv", ["x", wi], pads=[1, 1, 1, 1])])
    y = b.conv(x, 8, 2)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [y]))
    assert [g.roots for g in result.plan.groups] == [["Conv_2"]]
    assert not any(n.op_type in ("Constant", "Identity") for n in result.model.graph.node)


def test_a_failing_rule_blocks_its_group_not_the_run(tmp_path, monkeypatch):
    from onnxprune import oprules
    from onnxprune.depgraph import ANALYSIS_FAILED

    def broken(visit):
        raise IndexError("bug")

    monkeypatch.setitem(oprules.RULES, "Sigmoid", broken)
    b = GraphBuilder()
    a = b.conv(b.op("Sigmoid", [b.conv("x", 3, 4)]), 4, 2)
    c = b.conv(b.op("Relu", [b.conv("x", 3, 4)]), 4, 2)
    result = _oracle(tmp_path, b.model({"x": ["N", 3, 4, 4]}, [b.op("Add", [a, c])]))
    assert any(ANALYSIS_FAILED in r for r in _reasons(result))
    assert [g.roots for g in result.plan.groups if g.removed] == [["Conv_4"]]
