"""Least-squares repair: exact pieces (BN folding, ridge solution) and its effect on accuracy."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import prune
from onnxprune.reconstruct import _Sums, fold_batchnorms, solve_ridge
from tests.helpers import assert_outputs_close, run


def _accuracy(model, eval_data) -> float:
    logits = run(model, {"input": eval_data["input"]})[0]
    return float((logits.argmax(1) == eval_data["labels"]).mean())


def test_batchnorm_folding_is_exact(models_dir, eval_data):
    result = prune(models_dir / "vgg_digits.onnx", filters=0.0, write=False)
    model = copy.deepcopy(result.reference)
    convs = {n.name for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    fold_batchnorms(model, convs)
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    feeds = {"input": eval_data["input"][:64]}
    assert_outputs_close(run(result.reference, feeds), run(model, feeds), rtol=1e-5)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    rows=st.integers(5, 60),
    d=st.integers(1, 12),
    o=st.integers(1, 5),
    damping=st.sampled_from([1e-6, 1e-3, 1e-1]),
    intercept=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_ridge_never_raises_error_and_matches_lstsq(rows, d, o, damping, intercept, seed):
    rng = np.random.default_rng(seed)
    # Activations arrive as float32; per-batch products are float32 (sums in float64).
    x = (rng.standard_normal((rows, d)) @ rng.standard_normal((d, d))).astype(np.float32)
    y = (x @ rng.standard_normal((d, o)) + rng.standard_normal((rows, o)) + 3.0).astype(np.float32)
    x, y = x.astype(np.float64), y.astype(np.float64)
    w0 = rng.standard_normal((d, o))
    b0 = rng.standard_normal(o) if intercept else None
    sums = _Sums(d, o)
    for chunk in np.array_split(np.arange(rows), 3):  # streamed in batches
        sums.add(x[chunk], y[chunk])
    w, b, lam, before, after = solve_ridge(sums, w0, b0, damping)
    assert after <= before + 1e-9
    # The reported errors are the true errors of the returned solution (to float32 sums).
    pred = x @ w + (b if b is not None else 0)
    yc = y - y.mean(0) if intercept else y
    assert np.isclose(after, np.sum((pred - y) ** 2) / np.sum(yc**2), rtol=1e-2, atol=1e-3)
    # The normal equations of ridge-towards-w0 hold.
    xc = x - x.mean(0) if intercept else x
    ycent = y - y.mean(0) if intercept else y
    lhs = (xc.T @ xc + lam * np.eye(d)) @ w
    scale = np.abs(xc.T @ ycent).max() + lam * np.abs(w0).max()
    assert np.allclose(lhs, xc.T @ ycent + lam * w0, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize("model_name", ["vgg_digits.onnx", "resnet_digits.onnx"])
def test_reconstruction_recovers_accuracy(models_dir, calib_path, eval_data, model_name):
    path = models_dir / model_name
    common = dict(filters=0.5, calib=str(calib_path), calib_samples=256, write=False)
    plain = prune(path, reconstruct=False, **common)
    repaired = prune(path, **common)  # reconstruct is on by default with --calib
    dense = _accuracy(plain.reference, eval_data)
    assert _accuracy(plain.model, eval_data) < dense - 0.2  # L1 alone collapses
    assert _accuracy(repaired.model, eval_data) > dense - 0.03
    fits = repaired.report["reconstruction"]
    assert fits and all(f["relative_error_after"] <= f["relative_error_before"] for f in fits)
    assert repaired.report["params"]["after"] <= plain.report["params"]["after"]


def test_constant_channel_is_compensated_exactly(models_dir, calib_path, eval_data, tmp_path):
    """A hidden unit that is constant (ReLU of a bias) is folded into the next bias exactly."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(models_dir / "vgg_digits.onnx"))
    hidden = next(n for n in model.graph.node if n.name == "/classifier/classifier.1/Gemm")
    inits = {i.name: i for i in model.graph.initializer}
    weight = numpy_helper.to_array(inits[hidden.input[1]]).copy()  # [128, 256], transB=1
    bias = numpy_helper.to_array(inits[hidden.input[2]]).copy()
    weight[7] = 0.0  # unit 7 ignores its input ...
    bias[7] = 0.75  # ... and always outputs ReLU(0.75) = 0.75
    inits[hidden.input[1]].CopyFrom(numpy_helper.from_array(weight, hidden.input[1]))
    inits[hidden.input[2]].CopyFrom(numpy_helper.from_array(bias, hidden.input[2]))
    path = tmp_path / "constant.onnx"
    onnx.save(model, str(path))

    common = dict(
        calib=str(calib_path),
        criterion="l1",
        uniform=True,
        protect=False,
        layer_ratio=("*classifier.1*=0.008",),
        write=False,
    )  # exactly one unit
    repaired = prune(path, **common)
    plain = prune(path, reconstruct=False, **common)
    group = next(g for g in repaired.plan.groups if "/classifier/classifier.1/Gemm" in g.roots)
    assert group.removed == [7]
    feeds = {"input": eval_data["input"][:200]}
    dense = run(model, feeds)[0]
    assert_outputs_close([dense], run(repaired.model, feeds), rtol=1e-5)
    assert not np.allclose(dense, run(plain.model, feeds)[0], atol=1e-3)
