"""Gradient saliency scores: numpy oracles, and rankings on the sample models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.autodiff import GradientSession
from onnxprune.errors import PruneError
from onnxprune.saliency import (
    fisher_accumulate,
    fisher_weight_scores,
    snip_scores,
    taylor_accumulate,
    taylor_channel_scores,
    taylor_scores,
)

MODELS = Path(__file__).resolve().parent.parent / "models"


def _calib(n: int) -> np.ndarray:
    return np.load(MODELS / "digits_calib.npz")["input"][:n]


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_snip_is_abs_gw_normalised_over_the_model() -> None:
    rng = np.random.default_rng(0)
    w = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    g = {"a": rng.normal(size=(3, 4)), "b": rng.normal(size=5)}
    scores = snip_scores(w, g)
    total = np.abs(g["a"] * w["a"]).sum() + np.abs(g["b"] * w["b"]).sum()
    np.testing.assert_allclose(scores["a"], np.abs(g["a"] * w["a"]) / total)
    assert sum(s.sum() for s in scores.values()) == pytest.approx(1.0)


def test_snip_rejects_mismatched_inputs_and_handles_zero() -> None:
    with pytest.raises(PruneError, match="no gradient"):
        snip_scores({"a": np.ones(2)}, {})
    with pytest.raises(PruneError, match="shape"):
        snip_scores({"a": np.ones(2)}, {"a": np.ones(3)})
    assert snip_scores({"a": np.ones(2)}, {"a": np.zeros(2)})["a"].tolist() == [0.0, 0.0]


def test_snip_ranks_a_planted_zero_gradient_connection_last() -> None:
    # A central pixel is blanked in every calibration image, so every first-layer weight
    # reading it has an exactly zero gradient: SNIP must put those connections last.
    model = onnx.load(str(MODELS / "mlp_digits.onnx"))
    session = GradientSession(model)
    weights = _weights(model)
    x = _calib(32).copy()
    pixel = 3 * 8 + 4  # Flatten of [N, 1, 8, 8]; Gemm transB=1 weight is [300, 64]
    before = snip_scores(weights, session.run({"input": x}).weights)["net.1.weight"]
    assert np.count_nonzero(before[:, pixel]) > 0  # the plant is what zeroes them
    x[:, 0, 3, 4] = 0.0
    scores = snip_scores(weights, session.run({"input": x}).weights)
    first = scores["net.1.weight"]
    assert np.all(first[:, pixel] == 0.0)
    assert np.count_nonzero(first[:, 1:]) > 0.5 * first[:, 1:].size
    everything = np.concatenate([s.reshape(-1) for s in scores.values()])
    lowest = np.sort(everything)[: first.shape[0]]
    assert np.all(lowest == 0.0)
    assert sum(s.sum() for s in scores.values()) == pytest.approx(1.0)


def test_fisher_sums_squared_per_sample_gradients() -> None:
    model = onnx.load(str(MODELS / "mlp_digits.onnx"))
    session = GradientSession(model, wrt=["net.5.weight", "net.5.bias"])
    x, labels = _calib(5), np.array([0, 1, 2, 3, 4])
    total = None
    per_sample = []
    for i in range(5):
        grads = session.run({"input": x[i : i + 1]}, labels[i : i + 1]).weights
        per_sample.append(grads)
        total = fisher_accumulate(total, grads)
    for name in total:
        expected = sum(np.square(g[name].astype(np.float64)) for g in per_sample)
        np.testing.assert_allclose(total[name], expected)
    scores = fisher_weight_scores(total, _weights(model), samples=5)
    w = _weights(model)["net.5.weight"].astype(np.float64)
    np.testing.assert_allclose(scores["net.5.weight"], 0.5 * total["net.5.weight"] / 5 * w**2)


def test_fisher_batched_approximation_scales_by_batch_squared() -> None:
    g = {"w": np.array([0.5, -2.0])}
    once = fisher_accumulate(None, g, batch_size=4)
    np.testing.assert_allclose(once["w"], 16 * g["w"] ** 2)
    twice = fisher_accumulate(once, g, batch_size=4)
    np.testing.assert_allclose(twice["w"], 32 * g["w"] ** 2)
    assert once["w"] is not twice["w"]  # pure: the running total is not modified
    with pytest.raises(PruneError):
        fisher_accumulate(None, g, batch_size=0)


def test_taylor_matches_numpy_and_is_l2_normalised() -> None:
    rng = np.random.default_rng(1)
    z, g = rng.normal(size=(4, 3, 5, 5)), rng.normal(size=(4, 3, 5, 5))
    scores = taylor_channel_scores(z, g, grad_of_mean_loss=False)
    raw = np.abs((z * g).mean(axis=(0, 2, 3)))
    np.testing.assert_allclose(scores, raw / np.linalg.norm(raw))
    assert np.linalg.norm(scores) == pytest.approx(1.0)
    last_axis = taylor_channel_scores(
        np.moveaxis(z, 1, -1), np.moveaxis(g, 1, -1), axis=-1, grad_of_mean_loss=False
    )
    np.testing.assert_allclose(last_axis, scores)


def test_taylor_streaming_equals_one_batch() -> None:
    rng = np.random.default_rng(2)
    z, g = rng.normal(size=(6, 4, 3)), rng.normal(size=(6, 4, 3))
    # Gradients of a batch-mean loss carry 1/N; split batches carry different N.
    whole = taylor_channel_scores(z, g / 6)
    acc = taylor_accumulate(None, z[:2], g[:2] / 2)
    acc = taylor_accumulate(acc, z[2:], g[2:] / 4)
    np.testing.assert_allclose(taylor_scores(acc), whole)
    with pytest.raises(PruneError):
        taylor_accumulate(acc, z[:, :3], g[:, :3])


def test_taylor_ranks_a_dead_channel_last() -> None:
    # Kill stem channel 5: zero filter, zero mean, negative BN bias → ReLU output is 0.
    model = onnx.load(str(MODELS / "resnet_digits.onnx"))
    arrays = {name: value.copy() for name, value in _weights(model).items()}
    arrays["stem.0.weight"][5] = 0.0
    arrays["stem.1.running_mean"][5] = 0.0
    arrays["stem.1.bias"][5] = -1.0
    for i, init in enumerate(model.graph.initializer):
        model.graph.initializer[i].CopyFrom(numpy_helper.from_array(arrays[init.name], init.name))
    relu = next(n for n in model.graph.node if n.op_type == "Relu").output[0]
    session = GradientSession(model, wrt=[], activations=[relu])
    acc = None
    x = _calib(64)
    for start in range(0, 64, 32):
        out = session.run({"input": x[start : start + 32]})
        acc = taylor_accumulate(acc, out.activations[relu], out.activation_grads[relu])
    scores = taylor_scores(acc)
    assert scores.shape == (32,)
    assert scores[5] == 0.0
    assert np.argsort(scores)[0] == 5
    assert np.count_nonzero(scores) == 31
