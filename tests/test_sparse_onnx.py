"""--sparse-initializers: the written model stores pruned weights as ONNX sparse
initializers, is smaller, loads in onnxruntime and equals the dense zeroed model exactly."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune import prune
from onnxprune.errors import VerificationError
from onnxprune.sparse_onnx import (
    check_sparse_model,
    densify,
    sparse_to_dense,
    to_sparse_initializers,
    weight_arrays,
)
from tests.helpers import run


def make_model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("model_name", ["mlp_digits.onnx", "resnet_digits.onnx"])
def test_sparse_initializer_model_equals_dense_zeroed_model(
    tmp_path, models_dir, calib_path, eval_data, model_name
):
    kwargs = {"weights": 0.9, "weight_criterion": "magnitude", "calib": str(calib_path)}
    dense_out, sparse_out = tmp_path / "dense.onnx", tmp_path / "sparse.onnx"
    prune(models_dir / model_name, dense_out, **kwargs)
    result = prune(models_dir / model_name, sparse_out, sparse_initializers=True, **kwargs)
    dense, written = onnx.load(str(dense_out)), onnx.load(str(sparse_out))
    assert len(written.graph.sparse_initializer) == len(result.report["sparsity"]["layers"])
    assert not dense.graph.sparse_initializer
    assert sparse_out.stat().st_size < 0.5 * dense_out.stat().st_size
    assert result.report["size_bytes"]["after"] == sparse_out.stat().st_size
    info = result.report["sparsity"]["sparse_initializers"]
    assert info["stored_sparse"] == len(written.graph.sparse_initializer)
    assert "identical" in info["verified"]
    for sp in written.graph.sparse_initializer:  # COO: int64 linear indices, ascending
        indices = numpy_helper.to_array(sp.indices)
        assert indices.dtype == np.int64 and indices.ndim == 1
        assert np.all(np.diff(indices) > 0)
    # the stored weights are the dense model's, and so are the outputs, bit for bit
    names = [r["weight"] for r in result.report["sparsity"]["layers"]]
    ours, theirs = weight_arrays(written, names), weight_arrays(dense, names)
    for name in names:
        np.testing.assert_array_equal(ours[name], theirs[name])
    feeds = {"input": eval_data["input"]}
    for a, b in zip(run(written, feeds), run(dense, feeds), strict=True):
        np.testing.assert_array_equal(a, b)
    # and the report's sparsity is what the written (sparse) model holds
    for row in result.report["sparsity"]["layers"]:
        assert row["nnz"] == np.count_nonzero(ours[row["weight"]])


def test_dense_stays_where_coo_is_larger():
    rng = np.random.default_rng(0)
    half = (rng.standard_normal((8, 8)) * (rng.random((8, 8)) < 0.5)).astype(np.float32)
    tenth = np.zeros((8, 8), np.float32)
    tenth[0, :6] = 1.0
    empty = np.zeros((4, 4), np.float32)
    model = make_model(
        helper.make_graph(
            [
                helper.make_node("MatMul", ["x", "half"], ["a"]),
                helper.make_node("MatMul", ["a", "tenth"], ["b"]),
                helper.make_node("Add", ["b", "bias"], ["y"]),
            ],
            "g",
            [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 8])],
            [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2, 8])],
            [
                numpy_helper.from_array(half, "half"),
                numpy_helper.from_array(tenth, "tenth"),
                numpy_helper.from_array(np.ones(8, np.float32), "bias"),
                numpy_helper.from_array(empty, "empty"),
            ],
        )
    )
    out, rows = to_sparse_initializers(model, ["half", "tenth", "empty"])
    stored = {r["name"]: r["stored"] for r in rows}
    assert stored == {"half": "dense", "tenth": "sparse", "empty": "dense"}
    assert [i.name for i in out.graph.initializer] == ["half", "bias", "empty"]
    np.testing.assert_array_equal(sparse_to_dense(out.graph.sparse_initializer[0]), tenth)
    again = densify(out)
    assert not again.graph.sparse_initializer
    assert {i.name for i in again.graph.initializer} == {"half", "tenth", "bias", "empty"}
    x = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    assert check_sparse_model(out, model, [{"x": x}]) == 2


def test_coordinate_indices_are_read_too():
    dense = np.zeros((3, 4), np.float32)
    dense[1, 2], dense[2, 0] = 5.0, -1.0
    sp = helper.make_sparse_tensor(
        numpy_helper.from_array(np.array([5.0, -1.0], np.float32), "w"),
        numpy_helper.from_array(np.array([[1, 2], [2, 0]], np.int64)),
        [3, 4],
    )
    np.testing.assert_array_equal(sparse_to_dense(sp), dense)


def test_a_differing_sparse_model_fails_verification():
    w = np.zeros((4, 4), np.float32)
    w[0, 0] = 1.0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(w, "w")],
    )
    model = make_model(graph)
    sparse, _ = to_sparse_initializers(model, ["w"])
    tampered = onnx.ModelProto()
    tampered.CopyFrom(sparse)
    values = tampered.graph.sparse_initializer[0].values
    values.CopyFrom(numpy_helper.from_array(np.array([2.0], np.float32), "w"))
    with pytest.raises(VerificationError, match="differs from the dense zeroed model"):
        check_sparse_model(tampered, model, [{"x": np.ones((1, 4), np.float32)}])
