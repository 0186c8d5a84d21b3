"""Whole-model gradients of the sample models against finite differences.

The CNNs run in float32 (onnxruntime has no double Conv), where a central difference
is limited by rounding noise for a small step and by ReLU/max-pool kinks for a large
one. Each probe therefore walks down a ladder of steps and uses the first one whose
forward and backward one-sided differences agree (no kink inside the step); the
oracle is then judged over all probes together (median and worst relative error,
cosine of the two gradient vectors), which a wiring mistake cannot pass. The MLP
only uses ops onnxruntime runs in double, so a float64 copy gets the strict check.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.autodiff import (
    GradientSession,
    build_gradient_model,
    gradients,
    load_for_gradients,
)
from onnxprune.autodiff.builder import ensure_opset

MODELS = Path(__file__).resolve().parent.parent / "models"


def _calib(n: int) -> np.ndarray:
    return np.load(MODELS / "digits_calib.npz")["input"][:n]


def _load(name: str) -> onnx.ModelProto:
    return onnx.load(str(MODELS / f"{name}_digits.onnx"))


class ForwardLoss:
    """Cross-entropy of the model's logits in float64, weights overridable per call."""

    def __init__(
        self,
        model: onnx.ModelProto,
        x: np.ndarray,
        labels: np.ndarray,
        logits: str | None = None,
        input_name: str = "input",
    ) -> None:
        model = onnx.ModelProto.FromString(model.SerializeToString())
        if logits is not None:
            del model.graph.output[:]
            model.graph.output.append(onnx.ValueInfoProto(name=logits))
        self.input_name = input_name
        self.weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        for name, value in self.weights.items():
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            model.graph.input.append(helper.make_tensor_value_info(name, elem, value.shape))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # overridable initializers make ORT chatty
        self.session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        self.x, self.labels = x, labels

    def __call__(self, overrides: dict[str, np.ndarray] | None = None) -> float:
        feeds = {self.input_name: self.x, **self.weights, **(overrides or {})}
        logits = self.session.run(None, feeds)[0].astype(np.float64)
        logits = logits.reshape(len(logits), -1)
        logits -= logits.max(axis=1, keepdims=True)
        log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        return float(-log_probs[np.arange(len(self.labels)), self.labels].mean())


def _probe(loss: ForwardLoss, name: str, index: tuple, base: float, floor: float):
    """Central difference at the largest step free of kinks, or None if none is."""
    w = loss.weights[name]
    scale = max(abs(float(w[index])), float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))))
    for rel in (1e-2, 3e-3, 1e-3):
        plus, minus = w.copy(), w.copy()
        plus[index] += w.dtype.type(rel * scale)
        minus[index] -= w.dtype.type(rel * scale)
        up, down = float(plus[index] - w[index]), float(w[index] - minus[index])
        hi, lo = loss({name: plus}), loss({name: minus})
        forward, backward = (hi - base) / up, (base - lo) / down
        if abs(forward - backward) <= 0.05 * max(abs(forward), abs(backward), floor):
            return (hi - lo) / (up + down)
    return None


def _compare(
    model: onnx.ModelProto,
    x: np.ndarray,
    labels: np.ndarray,
    seed: int,
    wrt: list[str] | None = None,
    input_name: str = "input",
) -> tuple[np.ndarray, np.ndarray]:
    """Analytic and finite-difference gradients on the probes that found a clean step."""
    session = GradientSession(model, wrt=wrt)
    grads = session.run({input_name: x}, labels).weights
    loss = ForwardLoss(ensure_opset(model), x, labels, session.backward.logits, input_name)
    base = loss()
    rng = np.random.default_rng(seed + 1)
    analytic, numeric = [], []
    for tensor, g in grads.items():
        floor = 0.02 * float(np.abs(g).max())
        top = np.argsort(-np.abs(g).reshape(-1))[:2]
        for flat in [*top, *rng.choice(g.size, 2)]:
            index = np.unravel_index(int(flat), g.shape)
            fd = _probe(loss, tensor, index, base, floor)
            if fd is not None:
                analytic.append(float(g[index]))
                numeric.append(fd)
    return np.array(analytic), np.array(numeric)


def _assert_close(analytic: np.ndarray, numeric: np.ndarray, probes: int) -> None:
    assert len(analytic) >= probes  # most probes found a kink-free step
    scale = np.maximum(np.abs(analytic), np.abs(numeric))
    rel = np.abs(analytic - numeric) / np.maximum(scale, 1e-3 * scale.max())
    cosine = analytic @ numeric / (np.linalg.norm(analytic) * np.linalg.norm(numeric))
    assert np.median(rel) < 0.01
    assert np.quantile(rel, 0.9) < 0.05
    assert rel.max() < 0.25
    assert cosine > 0.9995


@pytest.mark.parametrize("name", ["resnet", "vgg"])
def test_sample_model_gradients_match_finite_differences(name: str) -> None:
    labels = np.random.default_rng(0).integers(0, 10, 8)
    analytic, numeric = _compare(_load(name), _calib(8), labels, seed=0)
    _assert_close(analytic, numeric, probes=60)


def _zoo_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light model-zoo network from the onnx wheel, weights folded and made random
    (He-scaled, so activations and logits stay of order 1)."""
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    model = load_for_gradients(path)
    rng = np.random.default_rng(seed)
    positive = {  # BatchNorm scale and variance
        n.input[i] for n in model.graph.node if n.op_type == "BatchNormalization" for i in (1, 4)
    }
    for i, init in enumerate(model.graph.initializer):
        value = numpy_helper.to_array(init)
        if value.dtype != np.float32:
            continue
        if init.name in positive:
            fresh = rng.uniform(0.8, 1.2, value.shape)
        elif value.ndim <= 1:  # biases, BatchNorm shifts and means
            fresh = rng.normal(size=value.shape) * 0.01
        else:
            fresh = rng.normal(size=value.shape) * np.sqrt(2.0 / np.prod(value.shape[1:]))
        model.graph.initializer[i].CopyFrom(
            numpy_helper.from_array(fresh.astype(np.float32), init.name)
        )
    return model


@pytest.mark.slow
@pytest.mark.parametrize("name", ["light_squeezenet", "light_inception_v1"])
def test_model_zoo_gradients_match_finite_differences(name: str) -> None:
    # Opset 9 (upgraded), Softmax outputs traced back to logits, LRN, Concat, Dropout.
    model = _zoo_model(name)
    graph_input = model.graph.input[0]
    shape = [d.dim_value or 1 for d in graph_input.type.tensor_type.shape.dim]
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    floats = [t.name for t in model.graph.initializer if t.data_type == TensorProto.FLOAT]
    wrt = [floats[i] for i in np.random.default_rng(2).choice(len(floats), 6, replace=False)]
    analytic, numeric = _compare(model, x, np.array([7]), 0, wrt, graph_input.name)
    _assert_close(analytic, numeric, probes=12)


def _as_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    for i, init in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(
            numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name)
        )
    for info in (*graph.input, *graph.output, *graph.value_info):
        if info.type.tensor_type.elem_type == TensorProto.FLOAT:
            info.type.tensor_type.elem_type = TensorProto.DOUBLE
    return model


def test_mlp_in_float64_matches_finite_differences_tightly() -> None:
    model = _as_float64(_load("mlp"))
    x = _calib(6).astype(np.float64)
    labels = np.array([3, 1, 4, 1, 5, 9])
    result = GradientSession(model, activations=["input"]).run({"input": x}, labels)
    loss = ForwardLoss(model, x, labels)
    rng = np.random.default_rng(0)
    eps = 1e-6
    for name, grad in result.weights.items():
        for flat in rng.choice(grad.size, 4, replace=False):
            index = np.unravel_index(int(flat), grad.shape)
            plus, minus = loss.weights[name].copy(), loss.weights[name].copy()
            plus[index] += eps
            minus[index] -= eps
            fd = (loss({name: plus}) - loss({name: minus})) / (2 * eps)
            floor = 1e-3 * float(np.abs(grad).max())
            assert abs(fd - grad[index]) <= 1e-4 * max(abs(fd), abs(grad[index]), floor), name
    grad_x = result.activation_grads["input"]
    for flat in rng.choice(x.size, 6, replace=False):
        index = np.unravel_index(int(flat), x.shape)
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        loss.x = plus
        hi = loss()
        loss.x = minus
        fd = (hi - loss()) / (2 * eps)
        floor = 1e-3 * float(np.abs(grad_x).max())
        assert abs(fd - grad_x[index]) <= 1e-4 * max(abs(fd), abs(grad_x[index]), floor)


def test_default_wrt_is_every_float_initializer() -> None:
    model = _load("resnet")
    built = build_gradient_model(model)
    assert set(built.weight_grads) == {t.name for t in model.graph.initializer}
    onnx.checker.check_model(built.model, full_check=True)


def test_path_and_proto_give_the_same_gradients() -> None:
    x, labels = _calib(4), np.array([0, 1, 2, 3])
    from_path = gradients(MODELS / "vgg_digits.onnx", {"input": x}, labels)
    from_proto = gradients(_load("vgg"), {"input": x}, labels)
    assert from_path.keys() == from_proto.keys()
    for name in from_path:
        np.testing.assert_array_equal(from_path[name], from_proto[name])


def test_activation_gradient_sums_to_the_batchnorm_bias_gradient() -> None:
    # BN output y = ... + beta_c, so dL/dbeta_c = Σ_{n,h,w} dL/dy[n, c, h, w] exactly.
    model = _load("resnet")
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    session = GradientSession(model, wrt=[bn.input[2]], activations=[bn.output[0]])
    result = session.run({"input": _calib(16)}, np.arange(16) % 10)
    summed = result.activation_grads[bn.output[0]].sum(axis=(0, 2, 3))
    np.testing.assert_allclose(summed, result.weights[bn.input[2]], rtol=1e-4, atol=1e-7)
    assert result.activations[bn.output[0]].shape == (16, 32, 8, 8)


def test_one_session_streams_batches_of_any_size() -> None:
    session = GradientSession(_load("resnet"), wrt=["fc.weight", "stem.0.weight"])
    x = _calib(10)
    whole = session.run({"input": x})
    parts = [session.run({"input": x[:3]}), session.run({"input": x[3:]})]
    assert [p.batch_size for p in parts] == [3, 7]
    for name, grad in whole.weights.items():
        mixed = (3 * parts[0].weights[name] + 7 * parts[1].weights[name]) / 10
        np.testing.assert_allclose(grad, mixed, rtol=1e-3, atol=1e-6)
