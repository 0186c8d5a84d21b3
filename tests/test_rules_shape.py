"""Shape-moving rules: Concat/Split/Slice offsets, Resize, Pad, DepthToSpace, Squeeze,
Reduce, Gather and run-time shape arithmetic, across opsets, each under the oracle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.graphs import GraphBuilder
from tests.helpers import blocked_reasons, prunable_roots, prune_and_check


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return next(numpy_helper.to_array(i) for i in model.graph.initializer if i.name == name)


def _node(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


def _ints(node: onnx.NodeProto, model: onnx.ModelProto, attr: str, index: int) -> list[int]:
    for a in node.attribute:
        if a.name == attr:
            return list(a.ints)
    return _init(model, node.input[index]).tolist()


def test_concat_on_channel_axis_offsets_each_input(tmp_path):
    b = GraphBuilder()
    a = b.op("Relu", [b.conv("x", 3, 4)])
    c = b.op("Relu", [b.conv("x", 3, 6)])
    y = b.conv(b.op("Relu", [b.bn(b.op("Concat", [a, c], axis=1), 10)]), 10, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1"], ["Conv_3"]]
    second = result.groups[1]
    cat = next(t for t in second.tensors if t.tensor.startswith("concat"))
    assert cat.positions[:, 0].tolist() == list(range(4, 10))  # a part of the axis
    bn_scale = _node(result.model, "BatchNormalization").input[1]
    assert list(_init(result.model, bn_scale).shape) == [5]  # BN of the concat: 2 + 3


def test_densenet_style_concat_chain(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 4)])
    for width in (4, 8):
        new = b.op("Relu", [b.conv(x, width, 4)])
        x = b.op("Concat", [x, new], axis=1)
    y = b.conv(x, 12, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert len(prunable_roots(result)) == 3


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_split_concat_round_trip_c2f(tmp_path, opset):
    """YOLO C2f: cv1 -> Split -> bottleneck on one half -> Concat(all) -> cv2."""
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8, k=1)])
    if opset < 13:
        y0, y1 = b.op("Split", [x], n_out=2, axis=1, split=[4, 4])
    elif opset < 18:
        y0, y1 = b.op("Split", [x, b.const(np.array([4, 4], dtype=np.int64))], n_out=2, axis=1)
    else:
        y0, y1 = b.op("Split", [x], n_out=2, axis=1, num_outputs=2)
    y2 = b.op("Relu", [b.conv(b.op("Relu", [b.conv(y1, 4, 4)]), 4, 4)])
    y2 = b.op("Add", [y1, y2])  # shortcut: couples the half with the bottleneck output
    cat = b.op("Concat", [y0, y1, y2], axis=1)
    y = b.conv(cat, 12, 2, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y], opset=opset), tmp_path)
    roots = prunable_roots(result)
    assert ["Conv_1"] in roots and any(len(r) == 2 and r[0] == "Conv_1" for r in roots), roots
    split = _node(result.model, "Split")
    assert _ints(split, result.model, "split", 1) == [2, 2]


def test_slice_on_channel_axis_rewrites_bounds(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8, k=1)])
    cut = b.op(
        "Slice",
        [x, *(b.const(np.array(v, dtype=np.int64)) for v in ([2], [6], [1], [1]))],
    )
    rest = b.op("Slice", [x, *(b.const(np.array(v, dtype=np.int64)) for v in ([6], [99], [1]))])
    y = b.op("Concat", [b.conv(cut, 4, 2), b.conv(rest, 2, 2)], axis=1)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert len(prunable_roots(result)) == 3  # channels 0-1, 2-5, 6-7 of Conv_1 separately
    slices = [n for n in result.model.graph.node if n.op_type == "Slice"]
    starts = [int(_init(result.model, s.input[1])[0]) for s in slices]
    ends = [int(_init(result.model, s.input[2])[0]) for s in slices]
    assert starts == [1, 3] and ends == [3, 4]


def test_slice_opset9_attributes_and_spatial_slices(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8, k=1)])
    x = b.op("Slice", [x], starts=[0, 1], ends=[6, 3], axes=[1, 2])
    y = b.conv(x, 6, 2, k=1)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y], opset=9), tmp_path)
    sl = _node(result.model, "Slice")
    assert _ints(sl, result.model, "ends", 2)[0] == 3


@pytest.mark.parametrize(
    ("opset", "op", "build"),
    [
        (9, "Upsample", lambda b: [b.const(np.array([1, 1, 2, 2], dtype=np.float32))]),
        (10, "Resize", lambda b: [b.const(np.array([1, 1, 2, 2], dtype=np.float32))]),
        (13, "Resize", lambda b: ["", b.const(np.array([1, 1, 2, 2], dtype=np.float32))]),
        (13, "Resize", lambda b: ["", "", b.const(np.array([2, 8, 6, 6], dtype=np.int64))]),
    ],
)
def test_resize_and_upsample(tmp_path, opset, op, build):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8)])
    r = b.op(op, [x, *build(b)], mode="nearest")
    y = b.conv(r, 8, 2)
    shape = [2, 3, 3, 3] if build(GraphBuilder())[-1:] and opset == 13 else ["N", 3, 3, 3]
    result = prune_and_check(b.model({"x": shape}, [y], opset=opset), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]


def test_resize_of_the_channel_axis_blocks(tmp_path):
    b = GraphBuilder()
    x = b.conv("x", 3, 4)
    r = b.op("Resize", [x, "", b.const(np.array([1, 2, 1, 1], dtype=np.float32))], mode="nearest")
    result = prune_and_check(b.model({"x": ["N", 3, 3, 3]}, [b.conv(r, 8, 2)]), tmp_path)
    assert any("scales the channel axis" in r for r in blocked_reasons(result))


@pytest.mark.parametrize(
    ("pads", "ok"), [([0, 0, 1, 1, 0, 0, 1, 1], True), ([0, 1, 0, 0] * 2, False)]
)
def test_pad(tmp_path, pads, ok):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 4)])
    p = b.op("Pad", [x, b.const(np.array(pads, dtype=np.int64))])
    y = b.conv(p, 4 + (0 if ok else 2), 2)
    result = prune_and_check(b.model({"x": ["N", 3, 3, 3]}, [y]), tmp_path)
    assert (prunable_roots(result) == [["Conv_1"]]) is ok
    if not ok:
        assert any("pads the channel axis" in r for r in blocked_reasons(result))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_depth_to_space(tmp_path, mode):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 16)])
    d = b.op("DepthToSpace", [x], blocksize=2, mode=mode)
    y = b.conv(d, 4, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 3, 3]}, [y]), tmp_path)
    group = next(g for g in result.groups if g.roots == ["Conv_1"])
    assert group.prunable and group.channels == 4  # 4 output channels, 4 input channels each
    assert group.tensors[0].positions.shape == (4, 4)


def test_space_to_depth(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 4)])
    s = b.op("SpaceToDepth", [x], blocksize=2)
    y = b.conv(s, 16, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]


@pytest.mark.parametrize("opset", [11, 13, 18])
def test_squeeze_unsqueeze_and_reduce_axes_by_opset(tmp_path, opset):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8)])
    axes = b.const(np.array([2, 3], dtype=np.int64))
    if opset < 13:
        g = b.op("Squeeze", [b.op("GlobalAveragePool", [x])], axes=[2, 3])
        m = b.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
    else:
        g = b.op("Squeeze", [b.op("GlobalAveragePool", [x]), axes])
        m = (
            b.op("ReduceMean", [x], axes=[2, 3], keepdims=0)
            if opset < 18
            else b.op("ReduceMean", [x, axes], keepdims=0)
        )
    s = b.op("Add", [g, m])
    u = b.op(
        "Unsqueeze", [s, axes] if opset >= 13 else [s], **({} if opset >= 13 else {"axes": [2, 3]})
    )
    y = b.conv(b.op("Mul", [x, u]), 8, 2)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y], opset=opset), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]


def _dynamic_flatten(b: GraphBuilder, x: str, entries: list) -> str:
    """x.view(x.size(0), ...) as PyTorch exports it: Shape -> Gather -> Unsqueeze -> Concat."""
    shape = b.op("Shape", [x])
    parts = []
    for e in entries:
        if isinstance(e, int):
            parts.append(b.const(np.array([e], dtype=np.int64)))
        else:
            dim = b.op("Gather", [shape, b.const(np.array(e[1], dtype=np.int64))], axis=0)
            parts.append(b.op("Unsqueeze", [dim, b.const(np.array([0], dtype=np.int64))]))
    return b.op("Reshape", [x, b.op("Concat", parts, axis=0)])


def test_dynamic_batch_flatten_through_shape_arithmetic(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8)])
    flat = _dynamic_flatten(b, x, [("dim", 0), -1])
    y = b.gemm(flat, 8 * 16, 3)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]
    assert any(n.op_type == "Shape" for n in result.model.graph.node)  # batch stays dynamic


def test_channel_count_read_with_shape_is_folded_and_rewritten(tmp_path):
    """x.view(x.size(0), x.size(1), -1): the static channel entry folds to a literal that
    the Reshape rule rewrites; the dynamic batch entry stays a Shape read."""
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8)])
    r = _dynamic_flatten(b, x, [("dim", 0), ("dim", 1), -1])
    y = b.op("ReduceMax", [r], axes=[2], keepdims=0)
    y = b.gemm(y, 8, 3)
    result = prune_and_check(b.model({"x": ["N", 3, 4, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]
    cat = _node(result.model, "Concat")
    literals = [numpy_helper.to_array(i).tolist() for i in result.model.graph.initializer]
    assert [4] in literals and cat.input[1] in {i.name for i in result.model.graph.initializer}


def test_static_shape_arithmetic_is_folded(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 8)])
    r = _dynamic_flatten(b, x, [("dim", 0), ("dim", 1), -1])
    y = b.gemm(b.op("ReduceMax", [r], axes=[2], keepdims=0), 8, 3)
    result = prune_and_check(b.model({"x": [2, 3, 4, 4]}, [y]), tmp_path)
    assert not any(n.op_type in ("Shape", "Gather", "Concat") for n in result.model.graph.node)
    assert prunable_roots(result) == [["Conv_1"]]


def test_gather_on_token_axis(tmp_path):
    """ViT class token: x[:, 0] after a MatMul projection."""
    b = GraphBuilder()
    h = b.op("Relu", [b.op("MatMul", ["x", b.weight([4, 8])])])
    cls = b.op("Gather", [h, b.const(np.array(0, dtype=np.int64))], axis=1)
    y = b.gemm(cls, 8, 3)
    result = prune_and_check(b.model({"x": ["N", 5, 4]}, [y]), tmp_path)
    assert prunable_roots(result) == [["MatMul_1"]]


def test_expand_rewrites_its_channel_entry(tmp_path):
    b = GraphBuilder()
    x = b.op("Relu", [b.conv("x", 3, 4, k=1)])
    gate = b.op("GlobalAveragePool", [x])
    e = b.op("Expand", [gate, b.const(np.array([1, 4, 3, 3], dtype=np.int64))])
    y = b.conv(b.op("Add", [x, e]), 4, 2)
    result = prune_and_check(b.model({"x": [1, 3, 3, 3]}, [y]), tmp_path)
    assert prunable_roots(result) == [["Conv_1"]]
    assert _init(result.model, _node(result.model, "Expand").input[1]).tolist() == [1, 2, 3, 3]
