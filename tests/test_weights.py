"""Connection pruning (--weights, --nm) through the whole pipeline, on the sample models and
on hand-built graphs covering every layer kind (Conv, ConvTranspose, Gemm both ways,
MatMul). Every check is made on the model as written, not on what the code meant to do."""

from __future__ import annotations

import fnmatch
import math

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import prune
from onnxprune.api import PruneOptions, build_passes
from onnxprune.connections import (
    WeightsConfig,
    find_layers,
    from_view,
    prune_connections,
    split_layer_ratios,
    to_view,
)
from onnxprune.errors import UsageError
from onnxprune.sequential import StatLayer, waves
from onnxprune.sparse_onnx import weight_arrays
from onnxprune.unstructured import satisfies_nm
from tests.helpers import run

MLP = "mlp_digits.onnx"


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def pruned_weights(result) -> dict[str, np.ndarray]:
    names = [row["weight"] for row in result.report["sparsity"]["layers"]]
    return weight_arrays(result.model, names)


# hand-built graphs ------------------------------------------------------------------------


def every_kind_model(seed: int = 0) -> onnx.ModelProto:
    """x[N,8,6,6] → Conv → Relu → ConvTranspose → Relu → Flatten → Gemm(transB=0) → Relu →
    MatMul → Gemm(transA=1 via Transpose, transB=1)."""
    rng = np.random.default_rng(seed)

    def w(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32) * 0.3, name)

    nodes = [
        helper.make_node("Conv", ["x", "conv.w", "conv.b"], ["c"], name="conv", pads=[1] * 4),
        helper.make_node("Relu", ["c"], ["r1"], name="relu1"),
        helper.make_node("ConvTranspose", ["r1", "convt.w"], ["t"], name="convt", strides=[2, 2]),
        helper.make_node("Relu", ["t"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc1.w", "fc1.b"], ["g"], name="fc1"),
        helper.make_node("Relu", ["g"], ["r3"], name="relu3"),
        helper.make_node("MatMul", ["r3", "mm.w"], ["m"], name="mm"),
        helper.make_node("Transpose", ["m"], ["mt"], name="transpose", perm=[1, 0]),
        helper.make_node("Gemm", ["mt", "fc2.w"], ["y"], name="fc2", transA=1, transB=1),
    ]
    weights = [
        w("conv.w", 16, 8, 3, 3),
        w("conv.b", 16),
        w("convt.w", 16, 8, 3, 3),
        w("fc1.w", 8, 32),
        w("fc1.b", 32),
        w("mm.w", 32, 16),
        w("fc2.w", 12, 16),
    ]
    graph = helper.make_graph(
        nodes,
        "every_kind",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def batches_of(x: np.ndarray, size: int = 16):
    return lambda: ({"x": x[i : i + size]} for i in range(0, len(x), size))


@pytest.fixture(scope="module")
def every_kind():
    model = every_kind_model()
    x = np.random.default_rng(1).standard_normal((64, 8, 6, 6)).astype(np.float32)
    return model, x


@pytest.mark.parametrize("criterion", ["magnitude", "global", "wanda", "obs"])
@pytest.mark.parametrize("mode", [{"sparsity": 0.75}, {"nm": (2, 4)}])
def test_every_layer_kind_is_pruned_as_asked(every_kind, criterion, mode):
    model, x = every_kind
    config = WeightsConfig(criterion=criterion, **mode)
    out, record = prune_connections(model, config, batches_of(x))
    onnx.checker.check_model(out, full_check=True)
    assert {r["node"] for r in record["layers"]} == {"conv", "convt", "fc1", "mm", "fc2"}
    after = inits(out)
    views = {"conv": "conv", "convt": "conv_t", "fc1": "fc_t", "mm": "fc_t", "fc2": "fc"}
    for row in record["layers"]:
        w = after[row["weight"]]
        if "nm" in mode:
            assert satisfies_nm(to_view(w, views[row["node"]]) != 0, 2, 4), row["node"]
        elif criterion in ("magnitude", "obs"):
            assert np.count_nonzero(w) == w.size - math.floor(0.75 * w.size), row["node"]
        elif criterion == "wanda":  # floor(s * cols) per row
            rows, cols = to_view(w, views[row["node"]]).shape
            assert np.count_nonzero(w) == rows * (cols - math.floor(0.75 * cols))
    if criterion == "global" and "sparsity" in mode:  # one threshold: the total is exact
        sizes = [after[r["weight"]].size for r in record["layers"]]
        kept = sum(np.count_nonzero(after[r["weight"]]) for r in record["layers"])
        assert kept == sum(sizes) - math.floor(0.75 * sum(sizes))
    (y,) = run(out, {"x": x[:4]})
    assert np.isfinite(y).all()


def test_views_round_trip():
    rng = np.random.default_rng(0)
    for view, shape in [
        ("conv", (4, 3, 2, 2)),
        ("conv_t", (3, 4, 2, 2)),
        ("fc", (5, 7)),
        ("fc_t", (7, 5)),
        ("fc_t", (2, 7, 5)),
    ]:
        w = rng.standard_normal(shape)
        matrix = to_view(w, view)
        np.testing.assert_array_equal(from_view(matrix, shape, view), w)
    # the input dimension is a row: ConvTranspose [I, O, kh, kw] has I columns
    assert to_view(np.zeros((3, 4, 2, 2)), "conv_t").shape == (16, 3)
    assert to_view(np.zeros((7, 5)), "fc_t").shape == (5, 7)


def test_obs_layers_are_fit_with_an_intercept(every_kind):
    model, x = every_kind
    out, record = prune_connections(model, WeightsConfig(0.5, "obs"), batches_of(x))
    rows = {r["node"]: r for r in record["layers"]}
    assert rows["conv"]["target"] == "dense model output" and rows["conv"]["bias"] == "conv.b"
    assert rows["fc2"]["bias"] == "fc2.w.bias"  # added: fc2 had no bias
    assert rows["convt"]["target"] == "own output (SparseGPT)"  # overlap-add: no dense rows
    assert "bias" not in rows["mm"]  # MatMul has no bias input
    for row in rows.values():
        assert 0.0 <= row["relative_error"] < 1.0 and row["relative_error_before"] >= 0.0
    (y,) = run(out, {"x": x[:8]})
    (y0,) = run(model, {"x": x[:8]})
    assert y.shape == y0.shape


def test_find_layers_gives_reasons():
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "wint"], ["a"], name="int_weight"),
        helper.make_node("Cast", ["a"], ["af"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("MatMul", ["af", "wx"], ["b"], name="runtime_weight"),
        helper.make_node("MatMul", ["b", "shared"], ["c"], name="shared1"),
        helper.make_node("MatMul", ["c", "shared"], ["d"], name="shared2"),
        helper.make_node("MatMul", ["const", "d"], ["e"], name="const_first"),
        helper.make_node("MatMul", ["e", "wok"], ["y"], name="ok"),
    ]
    graph = helper.make_graph(
        nodes,
        "reasons",
        [
            helper.make_tensor_value_info("x", TensorProto.INT32, [4, 4]),
            helper.make_tensor_value_info("wx", TensorProto.FLOAT, [4, 4]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
        [
            numpy_helper.from_array(np.ones((4, 4), np.int32), "wint"),
            numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "shared"),
            numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "const"),
            numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "wok"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    layers, skipped = find_layers(model, exclude=("nothing*",))
    assert [la.node for la in layers] == ["ok"]
    reasons = {s["node"]: s["reason"] for s in skipped}
    assert "not floating point" in reasons["int_weight"]
    assert "not a constant initializer" in reasons["runtime_weight"]
    assert "shared" in reasons["shared1"] and "shared" in reasons["shared2"]
    assert "first MatMul operand" in reasons["const_first"]
    layers, skipped = find_layers(model, exclude=("wok",))  # globs match weight names too
    assert not layers and "excluded by --exclude 'wok'" in skipped[-1]["reason"]


def test_waves_let_independent_layers_share_a_pass(models_dir):
    model = onnx.load(str(models_dir / "resnet_digits.onnx"))
    layers, _ = find_layers(model)
    stat = [
        StatLayer(la.node, la.weight, la.input, la.output, la.rows, la.attrs, None, None)
        for la in layers
    ]
    grouped = [[la.node for la in wave] for wave in waves(model, stat)]
    assert grouped[0] == ["/stem/stem.0/Conv"]
    together = [w for w in grouped if "/layer2/conv1/Conv" in w][0]
    assert "/layer2/downsample/downsample.0/Conv" in together  # both read layer1's output
    assert grouped[-1] == ["/fc/Gemm"]
    assert sum(len(w) for w in grouped) == len(layers)


# layer ratios -----------------------------------------------------------------------------


def test_layer_ratio_routing():
    assert split_layer_ratios(["a=0.5"], True, False) == (("a=0.5",), ())
    assert split_layer_ratios(["a=0.5"], False, True) == ((), (("a", 0.5),))
    assert split_layer_ratios(["a=0.5"], False, False) == (("a=0.5",), ())
    both = split_layer_ratios(["weights:a*=0.9", "filters:b=0.25"], True, True)
    assert both == (("b=0.25",), (("a*", 0.9),))
    with pytest.raises(UsageError, match="ambiguous"):
        split_layer_ratios(["a=0.5"], True, True)
    with pytest.raises(UsageError, match="GLOB=S"):
        split_layer_ratios(["weights:a=1.0"], False, True)


def test_layer_ratio_sets_per_layer_sparsity_by_node_or_weight_name(models_dir):
    result = prune(
        models_dir / MLP,
        weights=0.5,
        layer_ratio=("net.5.weight=0.2", "/net/net.3/*=0", "net.1*=0.9"),
        write=False,
    )
    rows = {r["node"]: r for r in result.report["sparsity"]["layers"]}
    assert rows["/net/net.5/Gemm"]["sparsity"] == pytest.approx(0.2)
    assert rows["/net/net.1/Gemm"]["sparsity"] == pytest.approx(0.9)
    skipped = {s["node"]: s["reason"] for s in result.report["sparsity"]["skipped"]}
    assert "sparsity 0" in skipped["/net/net.3/Gemm"]
    assert np.count_nonzero(pruned_weights(result).get("net.3.weight", [1])) > 0
    assert np.count_nonzero(inits(result.model)["net.3.weight"] == 0) == 0


# the sample models -----------------------------------------------------------------------


@pytest.mark.parametrize("criterion", ["magnitude", "global", "obs"])
def test_reported_sparsity_equals_measured_on_written_model(
    tmp_path, models_dir, calib_path, criterion
):
    out = tmp_path / "m.onnx"
    result = prune(
        models_dir / MLP,
        out,
        weights=0.8,
        weight_criterion=criterion,
        calib=str(calib_path) if criterion == "obs" else None,
    )
    section = result.report["sparsity"]
    written = onnx.load(str(out))
    arrays = weight_arrays(written, [r["weight"] for r in section["layers"]])
    total_nnz = total = 0
    for row in section["layers"]:
        w = arrays[row["weight"]]
        assert row["nnz"] == np.count_nonzero(w) and row["elements"] == w.size
        assert row["density"] == pytest.approx(np.count_nonzero(w) / w.size, abs=1e-6)
        total_nnz, total = total_nnz + row["nnz"], total + w.size
        if criterion != "global":
            assert row["nnz"] == w.size - math.floor(0.8 * w.size)
        assert row["effective_macs"] == round(row["macs"] * row["density"])
    assert section["totals"]["nnz"] == total_nnz
    assert section["totals"]["sparsity"] == pytest.approx(1 - total_nnz / total, abs=1e-6)
    if criterion == "global":
        assert total - total_nnz == math.floor(0.8 * total)
    dense_macs = section["totals"]["macs"]
    assert dense_macs == result.report["flops"]["after"]
    assert section["totals"]["effective_macs"] < 0.25 * dense_macs


def test_nm_pattern_holds_in_the_written_cnn(tmp_path, models_dir, calib_path):
    out = tmp_path / "vgg.onnx"
    result = prune(
        models_dir / "vgg_digits.onnx", out, nm="2:4", calib=str(calib_path), calib_samples=32
    )
    section = result.report["sparsity"]
    assert section["nm"] == "2:4" and section["criterion"] == "obs"
    skipped = {s["node"]: s["reason"] for s in section["skipped"]}
    assert "multiple of M" in skipped["/features/features.0/Conv"]  # 1*3*3 = 9 inputs
    written = inits(onnx.load(str(out)))
    kinds = {r["weight"]: r["kind"] for r in section["layers"]}
    assert len(kinds) == 5
    for name, kind in kinds.items():
        view = to_view(written[name], kind)
        assert satisfies_nm(view != 0, 2, 4), name
        assert np.count_nonzero(view) == view.size // 2  # exactly 2 of every 4
    assert written["features.0.weight"].all()


def test_filters_and_weights_combine(tmp_path, models_dir, calib_path):
    out = tmp_path / "vgg.onnx"
    result = prune(
        models_dir / "vgg_digits.onnx",
        out,
        filters=0.3,
        weights=0.8,
        weight_criterion="magnitude",
        uniform=True,
        calib=str(calib_path),
    )
    report = result.report
    assert report["params"]["after"] < report["params"]["before"]  # filters removed
    section = report["sparsity"]
    assert section["totals"]["sparsity"] == pytest.approx(0.8, abs=0.01)
    written = inits(onnx.load(str(out)))
    original = inits(onnx.load(str(models_dir / "vgg_digits.onnx")))
    for row in section["layers"]:
        w = written[row["weight"]]
        assert row["shape"] == list(w.shape)
        assert 1 - np.count_nonzero(w) / w.size == pytest.approx(0.8, abs=0.01)
    assert written["features.3.weight"].shape[0] < original["features.3.weight"].shape[0]
    assert report["fidelity"]["outputs"][0]["top1_agreement"] is not None


@pytest.mark.parametrize("model_name", ["vgg_digits.onnx", MLP])
def test_weights_zero_leaves_structured_pruning_unchanged(models_dir, calib_path, model_name):
    path = models_dir / model_name
    plain = prune(path, filters=0.5, mask_only=True, write=False)
    zero = prune(path, filters=0.5, mask_only=True, weights=0.0, write=False)
    assert plain.model.SerializeToString() == zero.model.SerializeToString()
    assert zero.report["sparsity"] is None
    names = [p.name for p in build_passes(path, None, PruneOptions(filters=0.5, weights=0.0))]
    assert "weights" not in names and "blobs" not in names
    names = [p.name for p in build_passes(path, None, PruneOptions(filters=0.5, weights=0.5))]
    assert names[-3:] == ["verify", "report", "blobs"] and "weights" in names


def _first_layer_error(model, reference, x) -> float:
    """‖X W'ᵀ + b' − (X Wᵀ + b)‖² of the first Gemm on held-out inputs (same X for both)."""
    w, b = inits(model)["net.1.weight"], inits(model)["net.1.bias"]
    w0, b0 = inits(reference)["net.1.weight"], inits(reference)["net.1.bias"]
    rows = x.reshape(len(x), -1).astype(np.float64)
    return float(np.sum((rows @ w.T + b - rows @ w0.T - b0) ** 2))


def test_obs_beats_magnitude_at_90_percent_on_the_mlp(models_dir, calib_path, eval_data):
    path = models_dir / MLP
    runs = {
        crit: prune(
            path, weights=0.9, weight_criterion=crit, calib=str(calib_path), calib_samples=256,
            write=False,
        )
        for crit in ("magnitude", "obs")
    }  # fmt: skip
    dense = onnx.load(str(path))
    x, labels = eval_data["input"], eval_data["labels"]
    errors = {c: _first_layer_error(r.model, dense, x) for c, r in runs.items()}
    assert errors["obs"] < 0.8 * errors["magnitude"]
    (ref,) = run(dense, {"input": x})
    logits = {c: run(r.model, {"input": x})[0] for c, r in runs.items()}
    mse = {c: float(np.mean((v - ref) ** 2)) for c, v in logits.items()}
    assert mse["obs"] < 0.5 * mse["magnitude"]
    accuracy = {c: float(np.mean(v.argmax(1) == labels)) for c, v in logits.items()}
    assert accuracy["obs"] > accuracy["magnitude"] + 0.05
    assert accuracy["obs"] >= 0.95  # dense: 0.978
    for row in runs["obs"].report["sparsity"]["layers"]:
        # on calibration rows, vs the dense output; "before": the dense weights on the
        # sparse model's inputs, which the re-fit may even improve on
        assert 0.0 <= row["relative_error"] < 0.5 and row["relative_error_before"] >= 0.0


def test_sequential_statistics_see_the_sparse_model(models_dir, calib_path, eval_data):
    path = models_dir / MLP
    seq = prune(path, weights=0.9, calib=str(calib_path), calib_samples=256, write=False)
    one = prune(
        path, weights=0.9, calib=str(calib_path), calib_samples=256, weights_sequential=False,
        write=False,
    )  # fmt: skip
    assert seq.report["sparsity"]["sequential"] is True
    assert one.report["sparsity"]["sequential"] is False
    first = "net.1.weight"  # its input is the model input either way
    np.testing.assert_array_equal(inits(seq.model)[first], inits(one.model)[first])
    assert not np.array_equal(inits(seq.model)["net.3.weight"], inits(one.model)["net.3.weight"])
    x = {"input": eval_data["input"]}
    acc = [float(np.mean(run(r.model, x)[0].argmax(1) == eval_data["labels"])) for r in (seq, one)]
    assert acc[0] >= acc[1]


def test_exclude_leaves_layers_dense(models_dir):
    result = prune(models_dir / MLP, weights=0.7, exclude=("*net.3*",), write=False)
    skipped = {s["node"]: s["reason"] for s in result.report["sparsity"]["skipped"]}
    assert skipped == {"/net/net.3/Gemm": "excluded by --exclude '*net.3*'"}
    w = inits(result.model)["net.3.weight"]
    np.testing.assert_array_equal(w, inits(onnx.load(str(models_dir / MLP)))["net.3.weight"])
    assert all(
        not fnmatch.fnmatch(r["node"], "*net.3*") for r in result.report["sparsity"]["layers"]
    )


def test_calibration_criteria_need_calibration(models_dir):
    for crit in ("wanda", "obs"):
        with pytest.raises(UsageError, match="needs calibration data"):
            prune(models_dir / MLP, weights=0.5, weight_criterion=crit, write=False)
    result = prune(models_dir / MLP, weights=0.5, write=False)  # no --calib: magnitude
    assert result.report["sparsity"]["criterion"] == "magnitude"
    assert all("han_quality" in r for r in result.report["sparsity"]["layers"])


def test_max_drop_scales_the_weights_too(models_dir, calib_path):
    from onnxprune.api import _scaled

    trial = _scaled(PruneOptions(weights=0.8, filters=0.4), 0.5)
    assert trial.weights == pytest.approx(0.4) and trial.filters == pytest.approx(0.2)
