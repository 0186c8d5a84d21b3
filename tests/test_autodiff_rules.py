"""Every backward rule against central finite differences of the loss.

Each case is a one-op model; a fixed random linear head (Flatten over every axis,
MatMul) turns the op's outputs into logits, so the cross-entropy loss sends a
random-looking gradient into the op. The op's first operand is a graph input
(checked through the activation-gradient path), the others are initializers
(checked through the weight-gradient path). Float64 where onnxruntime runs the op
in double (relative error < 1e-4), float32 otherwise (< 1e-2). Inputs keep clear of
kinks (ReLU at 0, clip bounds, max-pool ties) so finite differences are valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from onnxprune.autodiff import (
    RULES,
    GradientSession,
    GradientUnavailable,
    build_gradient_model,
    gradients,
)
from onnxprune.errors import CalibrationError, PruneError

CLASSES = 5


@dataclass
class Case:
    op: str
    operands: list  # np.ndarray, or None for an omitted optional input
    attrs: dict = field(default_factory=dict)
    n_out: int = 1
    opset: int = 17
    frozen: tuple[int, ...] = ()  # float operands that are not differentiated (bounds, scales)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _away(shape, dtype=np.float64, lo=0.2, hi=1.5, seed=0) -> np.ndarray:
    """Random values with |v| in [lo, hi]: clear of a kink at 0."""
    rng = _rng(seed)
    return (rng.uniform(lo, hi, shape) * rng.choice([-1.0, 1.0], shape)).astype(dtype)


def _avoid(values: np.ndarray, points, gap=0.1) -> np.ndarray:
    out = values.copy()
    for p in points:
        near = np.abs(out - p) < gap
        out[near] = p + np.where(out[near] >= p, 2 * gap, -2 * gap)
    return out


def _distinct(shape, dtype=np.float64, seed=0) -> np.ndarray:
    """Values 0.1 apart in random order: max-pool windows never tie."""
    n = int(np.prod(shape))
    return ((_rng(seed).permutation(n) - n / 2) * 0.1).reshape(shape).astype(dtype)


def _normal(shape, dtype=np.float64, seed=0, scale=1.0) -> np.ndarray:
    return (_rng(seed).normal(size=shape) * scale).astype(dtype)


def _f(shape, seed=0):
    return _normal(shape, np.float32, seed)


def _d(shape, seed=0):
    return _normal(shape, np.float64, seed)


def _i(values):
    return np.asarray(values, dtype=np.int64)


def _value_info(name: str, array: np.ndarray) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(
        name, helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)
    )


def _op_model(case: Case) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[str]]:
    """The op alone (outputs = its outputs), its feeds, and the differentiable weights."""
    names, inits, weights = [], [], []
    feeds: dict[str, np.ndarray] = {}
    inputs = []
    for i, operand in enumerate(case.operands):
        if operand is None:
            names.append("")
            continue
        name = f"in{i}"
        names.append(name)
        is_float = np.issubdtype(operand.dtype, np.floating)
        if i == 0 and is_float:
            feeds[name] = operand
            inputs.append(_value_info(name, operand))
        else:
            inits.append(numpy_helper.from_array(operand, name))
            if is_float and i not in case.frozen:
                weights.append(name)
    outs = [f"out{j}" for j in range(case.n_out)]
    node = helper.make_node(case.op, names, outs, name=f"the_{case.op}", **case.attrs)
    graph = helper.make_graph(
        [node], "op", inputs, [onnx.ValueInfoProto(name=o) for o in outs], inits
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", case.opset)], ir_version=8
    )
    return model, feeds, weights


def _with_head(model: onnx.ModelProto, feeds: dict[str, np.ndarray], seed: int) -> onnx.ModelProto:
    """Append logits = Σ_j Flatten(out_j, axis=0) @ R_j (R_j fixed random) as output 'logits'."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(None, feeds)
    graph = model.graph
    rng = _rng(seed + 100)
    terms = []
    for j, (out, value) in enumerate(zip(graph.output, values, strict=True)):
        flat, proj, term = f"flat{j}", f"head{j}", f"term{j}"
        # Logits of order 1: a saturated softmax would leave only float noise to compare.
        scale = 1.0 / (np.sqrt(value.size) * max(float(np.std(value)), 0.1))
        weight = (rng.normal(size=(value.size, CLASSES)) * scale).astype(value.dtype)
        graph.initializer.append(numpy_helper.from_array(weight, proj))
        graph.node.append(helper.make_node("Flatten", [out.name], [flat], axis=0))
        graph.node.append(helper.make_node("MatMul", [flat, proj], [term]))
        terms.append(term)
    logits_type = helper.np_dtype_to_tensor_dtype(values[0].dtype)
    if len(terms) == 1:
        graph.node.append(helper.make_node("Identity", terms, ["logits"]))
    else:
        graph.node.append(helper.make_node("Sum", terms, ["logits"]))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("logits", logits_type, [1, CLASSES]))
    return model


def _loss_function(model, overridable, feeds, labels):
    """loss(overrides) with the named initializers fed as inputs (no rebuild per probe)."""
    built = build_gradient_model(model, wrt=[])
    m = built.model
    arrays = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    for name in overridable:
        m.graph.input.append(_value_info(name, arrays[name]))
    options = ort.SessionOptions()
    options.log_severity_level = 3  # overridable initializers make onnxruntime chatty
    session = ort.InferenceSession(
        m.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    base = {name: arrays[name] for name in overridable}

    def loss(overrides: dict[str, np.ndarray]) -> float:
        run = {**feeds, **base, **overrides, built.labels: labels}
        return float(session.run([built.loss], run)[0])

    return loss, base


def check_gradients(model, feeds, weights, activations, labels, seed=0, entries=6):
    """Compare analytic dL/dw and dL/dx with central differences on a few entries each."""
    grads = gradients(model, feeds, labels=labels, wrt=weights, activations=activations)
    loss, base = _loss_function(model, weights, feeds, labels)
    values = {**base, **{a: feeds[a] for a in activations}}
    keys = {**{w: w for w in weights}, **{a: f"grad:{a}" for a in activations}}
    rng = _rng(seed + 7)
    checked = 0
    for name, value in values.items():
        grad = grads[keys[name]]
        assert grad.shape == value.shape, name
        double = value.dtype == np.float64
        eps, tol = (1e-6, 1e-4) if double else (1e-2, 1e-2)
        flat_grad = np.abs(grad).reshape(-1)
        top = np.argsort(-flat_grad)[: entries // 2]
        picks = np.unique(np.concatenate([top, rng.choice(value.size, entries, replace=True)]))
        # Rounding noise of a central difference on a loss of order 1: an absolute
        # allowance on top of the relative tolerance (entries whose true gradient is
        # ~0 can only be checked to this level).
        noise = 1e-8 if double else 2e-5
        floor = 1e-2 * float(flat_grad.max())
        for flat in picks:
            index = np.unravel_index(flat, value.shape)
            plus, minus = value.copy(), value.copy()
            plus[index] += eps
            minus[index] -= eps
            fd = (loss({name: plus}) - loss({name: minus})) / (2 * eps)
            g = float(grad[index])
            allowed = tol * max(abs(fd), abs(g), floor) + noise
            assert abs(fd - g) <= allowed, f"{name}{index}: analytic {g:.6g} vs FD {fd:.6g}"
            checked += 1
    assert checked > 0


def check_case(case: Case, seed: int = 0) -> None:
    model, feeds, weights = _op_model(case)
    model = _with_head(model, feeds, seed)
    labels = _i([seed % CLASSES])
    check_gradients(model, feeds, weights, list(feeds), labels, seed)


def _conv_cases() -> dict[str, Case]:
    x = _f((2, 4, 7, 7), 1)
    w = _f((6, 4, 3, 3), 2)
    return {
        "conv": Case("Conv", [x, w], {"pads": [1, 1, 1, 1]}),
        "conv_bias_stride2": Case(
            "Conv", [x, w, _f((6,), 3)], {"strides": [2, 2], "pads": [1, 1, 1, 1]}
        ),
        "conv_stride3_uneven": Case("Conv", [_f((1, 4, 8, 9), 4), w], {"strides": [3, 2]}),
        "conv_dilation": Case("Conv", [x, w], {"dilations": [2, 2], "pads": [2, 1, 0, 1]}),
        "conv_group2": Case(
            "Conv", [x, _f((6, 2, 3, 3), 5), _f((6,), 6)], {"group": 2, "strides": [2, 1]}
        ),
        "conv_depthwise": Case("Conv", [x, _f((4, 1, 3, 3), 7)], {"group": 4, "pads": [1] * 4}),
        "conv_same_upper": Case("Conv", [x, w], {"auto_pad": "SAME_UPPER", "strides": [2, 2]}),
        "conv_same_lower": Case("Conv", [x, _f((6, 4, 2, 2), 8)], {"auto_pad": "SAME_LOWER"}),
        "conv_1d": Case("Conv", [_f((2, 3, 9), 9), _f((5, 3, 3), 10)], {"strides": [2]}),
        "conv_1x1": Case("Conv", [x, _f((3, 4, 1, 1), 11)], {"strides": [2, 2]}),
        "conv_pads_beyond_kernel": Case("Conv", [x, _f((6, 4, 2, 2), 21)], {"pads": [2, 0, 1, 3]}),
        "conv_3d": Case(
            "Conv", [_f((1, 2, 4, 5, 3), 22), _f((3, 2, 2, 3, 2), 23)], {"pads": [1] * 6}
        ),
        "convtranspose": Case("ConvTranspose", [_f((2, 4, 4, 4), 12), _f((4, 3, 3, 3), 13)]),
        "convtranspose_stride_pads_bias": Case(
            "ConvTranspose",
            [_f((2, 4, 4, 5), 14), _f((4, 3, 3, 3), 15), _f((3,), 16)],
            {"strides": [2, 2], "pads": [1, 0, 1, 1]},
        ),
        "convtranspose_output_padding": Case(
            "ConvTranspose",
            [_f((1, 4, 3, 3), 17), _f((4, 2, 3, 3), 18)],
            {"strides": [2, 3], "output_padding": [1, 2], "pads": [0, 1, 0, 0]},
        ),
        "convtranspose_group_dilation": Case(
            "ConvTranspose",
            [_f((2, 4, 4, 4), 19), _f((4, 3, 2, 2), 20)],
            {"group": 2, "dilations": [2, 1], "strides": [1, 2]},
        ),
    }


def _dense_cases() -> dict[str, Case]:
    return {
        "gemm": Case("Gemm", [_d((3, 4), 1), _d((4, 5), 2)]),
        "gemm_trans_alpha_beta_vec": Case(
            "Gemm",
            [_d((4, 3), 3), _d((5, 4), 4), _d((5,), 5)],
            {"transA": 1, "transB": 1, "alpha": 0.7, "beta": -1.3},
        ),
        "gemm_transb_matrix_c": Case(
            "Gemm", [_d((3, 4), 6), _d((5, 4), 7), _d((3, 5), 8)], {"transB": 1, "beta": 2.0}
        ),
        "gemm_transa_column_c": Case(
            "Gemm", [_d((4, 3), 9), _d((4, 5), 10), _d((3, 1), 11)], {"transA": 1}
        ),
        "gemm_scalar_c": Case("Gemm", [_d((3, 4), 12), _d((4, 5), 13), _d((), 14)]),
        "matmul": Case("MatMul", [_d((3, 4), 1), _d((4, 5), 2)]),
        "matmul_batched_broadcast": Case("MatMul", [_d((2, 3, 4), 3), _d((4, 5), 4)]),
        "matmul_4d_broadcast": Case("MatMul", [_d((2, 1, 3, 4), 5), _d((1, 3, 4, 2), 6)]),
        "matmul_weight_batched": Case("MatMul", [_d((3, 4), 7), _d((2, 4, 5), 8)]),
        "matmul_vec_mat": Case("MatMul", [_d((4,), 9), _d((4, 5), 10)]),
        "matmul_mat_vec": Case("MatMul", [_d((2, 3, 4), 11), _d((4,), 12)]),
        "matmul_vec_vec": Case("MatMul", [_d((4,), 13), _d((4,), 14)]),
        "batchnorm": Case(
            "BatchNormalization",
            [_d((2, 3, 4, 4), 1), _d((3,), 2), _d((3,), 3), _d((3,), 4), _d((3,), 5) ** 2 + 0.5],
            {"epsilon": 1e-3},
        ),
        "batchnorm_2d": Case(
            "BatchNormalization",
            [_d((4, 3), 6), _d((3,), 7), _d((3,), 8), _d((3,), 9), _d((3,), 10) ** 2 + 0.5],
        ),
    }


def _elementwise_cases() -> dict[str, Case]:
    x = _away((2, 3, 4), seed=1)
    wide = _rng(2).uniform(-5, 5, (2, 3, 4))
    return {
        "relu": Case("Relu", [x]),
        "leakyrelu": Case("LeakyRelu", [x], {"alpha": 0.1}),
        "clip": Case(
            "Clip", [_avoid(x, [-0.5, 0.5]), np.array(-0.5), np.array(0.5)], {}, frozen=(1, 2)
        ),
        "clip_min_only": Case("Clip", [x, np.array(0.0)], frozen=(1,)),
        "clip_none": Case("Clip", [x]),
        "sigmoid": Case("Sigmoid", [_d((2, 3, 4), 3)]),
        "tanh": Case("Tanh", [_d((2, 3, 4), 4)]),
        "hardsigmoid": Case(
            "HardSigmoid",
            [_avoid(wide, [-2.0, 3.0]).astype(np.float32)],
            {"alpha": 0.25, "beta": 0.5},
        ),
        "hardswish": Case("HardSwish", [_avoid(wide, [-3.0, 3.0]).astype(np.float32)], opset=17),
        "neg": Case("Neg", [_d((2, 3), 5)]),
        "exp": Case("Exp", [_d((2, 3), 6)]),
        "log": Case("Log", [_rng(7).uniform(0.5, 2.0, (2, 3))]),
        "sqrt": Case("Sqrt", [_rng(8).uniform(0.5, 2.0, (2, 3))]),
        "identity": Case("Identity", [_d((2, 3), 9)]),
        "dropout": Case("Dropout", [_d((2, 3), 10), np.array(0.3)], frozen=(1,)),
        "cast": Case("Cast", [_f((2, 3), 11)], {"to": TensorProto.DOUBLE}),
        "softmax": Case("Softmax", [_d((2, 3, 4), 12)], {"axis": 1}),
        "softmax_last": Case("Softmax", [_d((2, 3, 4), 13)]),
        "logsoftmax": Case("LogSoftmax", [_d((2, 3, 4), 14)], {"axis": 1}),
        "add_channel_bias": Case("Add", [_d((2, 3, 4, 5), 15), _d((3, 1, 1), 16)]),
        "add_both_broadcast": Case("Add", [_d((4, 1), 17), _d((1, 5), 18)]),
        "sub_scalar": Case("Sub", [_d((2, 3), 19), _d((), 20)]),
        "sub_reversed": Case("Sub", [_d((3, 1), 21), _d((2, 3, 4), 22)]),
        "mul_broadcast": Case("Mul", [_d((2, 3, 4), 23), _d((4,), 24)]),
        "mul_same_tensor": Case("Mul", [_d((2, 3), 25), _d((2, 3), 26)]),
        "div_broadcast": Case("Div", [_d((2, 3, 4), 27), _away((3, 1), seed=28, lo=0.5)]),
        "sum3": Case("Sum", [_d((2, 3), 29), _d((3,), 30), _d((2, 1), 31)]),
        "expand": Case("Expand", [_d((3, 1), 32), _i([2, 3, 4])]),
        "reducesum_axes_input": Case("ReduceSum", [_d((2, 3, 4), 33), _i([1])], {"keepdims": 0}),
        "reducesum_all": Case("ReduceSum", [_d((2, 3, 4), 34)]),
        "reducesum_opset13": Case("ReduceSum", [_d((2, 3, 4), 35), _i([-1, 0])], opset=13),
        "reducemean_attr": Case("ReduceMean", [_d((2, 3, 4), 36)], {"axes": [2], "keepdims": 0}),
        "reducemean_opset18": Case("ReduceMean", [_d((2, 3, 4), 37), _i([0, 2])], opset=18),
    }


def _movement_cases() -> dict[str, Case]:
    x = _d((2, 3, 4, 5), 1)
    return {
        "flatten": Case("Flatten", [x], {"axis": 2}),
        "reshape": Case("Reshape", [x, _i([0, -1, 10])]),
        "squeeze": Case("Squeeze", [_d((2, 1, 3), 2), _i([1])]),
        "unsqueeze": Case("Unsqueeze", [_d((2, 3), 3), _i([0, 3])]),
        "squeeze_opset11": Case("Squeeze", [_d((2, 1, 3), 4)], {"axes": [1]}, opset=11),
        "transpose": Case("Transpose", [x], {"perm": [2, 0, 3, 1]}),
        "transpose_default": Case("Transpose", [x]),
        "concat": Case("Concat", [x, _d((2, 2, 4, 5), 5), _d((2, 1, 4, 5), 6)], {"axis": 1}),
        "concat_negative_axis": Case("Concat", [x, _d((2, 3, 4, 2), 7)], {"axis": -1}),
        "split": Case("Split", [x, _i([1, 2])], {"axis": 1}, n_out=2),
        "split_opset18_num_outputs": Case(
            "Split", [_d((2, 6), 8)], {"axis": 1, "num_outputs": 3}, n_out=3, opset=18
        ),
        "split_opset13": Case("Split", [_d((4, 3), 9), _i([3, 1])], {"axis": 0}, 2, opset=13),
        "slice": Case("Slice", [x, _i([1, 0]), _i([3, 4]), _i([1, 3])]),
        "slice_steps": Case("Slice", [x, _i([3, 0]), _i([-100, 5]), _i([2, 3]), _i([-1, 2])]),
        "pad": Case("Pad", [x, _i([0, 0, 1, 2, 0, 1, 0, 1]), np.array(0.5)], frozen=(2,)),
        "pad_negative": Case("Pad", [x, _i([0, 0, -1, 2, 0, 0, 1, -2])]),
        "pad_axes": Case("Pad", [x, _i([1, 2, 0, 3]), None, _i([2, 3])], opset=18),
        "maxpool": Case(
            "MaxPool",
            [_distinct((2, 3, 6, 6), seed=1)],
            {"kernel_shape": [2, 2], "strides": [2, 2]},
        ),
        "maxpool_overlap_pads": Case(
            "MaxPool",
            [_distinct((2, 2, 5, 5), seed=2)],
            {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]},
        ),
        "maxpool_ceil_dilation": Case(
            "MaxPool",
            [_distinct((1, 2, 7, 8), seed=3)],
            {"kernel_shape": [2, 3], "strides": [2, 2], "dilations": [2, 1], "ceil_mode": 1},
        ),
        "maxpool_opset13": Case(
            "MaxPool",
            [_distinct((1, 2, 6, 6), seed=4)],
            {"kernel_shape": [3, 3], "strides": [3, 3]},
            opset=13,
        ),
        "maxpool_overlap_opset13": Case(
            "MaxPool",
            [_distinct((2, 2, 7, 6), seed=6)],
            {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 0, 1, 1]},
            opset=13,
        ),
        "maxpool_1d": Case(
            "MaxPool", [_distinct((2, 3, 9), seed=5)], {"kernel_shape": [3], "strides": [2]}
        ),
        "averagepool": Case(
            "AveragePool", [_f((2, 3, 6, 6), 6)], {"kernel_shape": [2, 2], "strides": [2, 2]}
        ),
        "averagepool_pads_include": Case(
            "AveragePool",
            [_f((2, 2, 5, 5), 7)],
            {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1], "count_include_pad": 1},
        ),
        "averagepool_pads_exclude": Case(
            "AveragePool",
            [_f((2, 2, 5, 7), 8)],
            {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1], "strides": [2, 2]},
        ),
        "averagepool_ceil_include": Case(
            "AveragePool",
            [_f((1, 2, 7, 6), 9)],
            {
                "kernel_shape": [3, 3],
                "strides": [2, 2],
                "pads": [1, 1, 0, 0],
                "ceil_mode": 1,
                "count_include_pad": 1,
            },
        ),
        "averagepool_ceil_exclude": Case(
            "AveragePool",
            [_f((1, 2, 7, 6), 10)],
            {"kernel_shape": [2, 3], "strides": [2, 2], "ceil_mode": 1},
        ),
        "averagepool_uncovered_rows": Case(
            "AveragePool", [_f((1, 2, 7, 8), 11)], {"kernel_shape": [2, 3], "strides": [3, 3]}
        ),
        "averagepool_1d_same": Case(
            "AveragePool",
            [_f((2, 3, 9), 12)],
            {"kernel_shape": [4], "strides": [2], "auto_pad": "SAME_UPPER"},
        ),
        "globalaveragepool": Case("GlobalAveragePool", [_f((2, 3, 4, 5), 13)]),
        "lrn_odd": Case(
            "LRN", [_f((2, 5, 3, 3), 16)], {"size": 3, "alpha": 0.6, "beta": 0.75, "bias": 1.5}
        ),
        "lrn_size5": Case("LRN", [_f((2, 6, 4, 3), 17)], {"size": 5, "alpha": 0.9, "beta": 0.6}),
        "resize_nearest_up": Case(
            "Resize",
            [_f((1, 2, 3, 4), 14), None, np.array([1, 1, 2, 2], np.float32)],
            {"mode": "nearest"},
            frozen=(2,),
        ),
        "resize_nearest_sizes": Case(
            "Resize",
            [_f((1, 2, 5, 4), 15), None, None, _i([1, 2, 3, 7])],
            {
                "mode": "nearest",
                "nearest_mode": "round_prefer_ceil",
                "coordinate_transformation_mode": "half_pixel",
            },
        ),
    }


CASES = {**_conv_cases(), **_dense_cases(), **_elementwise_cases(), **_movement_cases()}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rule_matches_finite_differences(name: str) -> None:
    check_case(CASES[name])


CONV_CASES = sorted(k for k, v in CASES.items() if v.op in ("Conv", "ConvTranspose"))


@pytest.mark.parametrize("name", CONV_CASES)
def test_conv_rules_without_the_patch_gemm(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Large layers take the swapped-convolution weight gradient; force it here.
    monkeypatch.setattr("onnxprune.autodiff.rules.PATCH_LIMIT", 0)
    check_case(CASES[name], seed=1)


def test_every_rule_is_tested_and_is_an_onnx_op() -> None:
    tested = {case.op for case in CASES.values()}
    assert set(RULES) <= tested, sorted(set(RULES) - tested)
    for op in RULES:
        assert onnx.defs.has(op), op


def _chain_model(ops: list[tuple[str, dict]], dynamic_batch: bool = True) -> onnx.ModelProto:
    """input [N,2,5,5] → Conv → ops... → Flatten → Gemm → logits [N,3]."""
    rng = _rng(3)
    inits = [
        numpy_helper.from_array(rng.normal(size=(4, 2, 3, 3)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.normal(size=(3, 4 * 5 * 5)).astype(np.float32) * 0.2, "fc"),
        numpy_helper.from_array(rng.normal(size=(3,)).astype(np.float32), "fc_b"),
    ]
    nodes = [helper.make_node("Conv", ["input", "w"], ["t0"], pads=[1, 1, 1, 1], name="conv")]
    for k, (op, attrs) in enumerate(ops):
        nodes.append(helper.make_node(op, [f"t{k}"], [f"t{k + 1}"], name=f"n{k}", **attrs))
    last = f"t{len(ops)}"
    nodes.append(helper.make_node("Flatten", [last], ["flat"]))
    nodes.append(helper.make_node("Gemm", ["flat", "fc", "fc_b"], ["logits"], transB=1))
    batch = "N" if dynamic_batch else 4
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 2, 5, 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_dynamic_batch_one_session_many_batch_sizes() -> None:
    model = _chain_model([("Tanh", {}), ("Sigmoid", {})])  # smooth: no kinks for the probes
    session = GradientSession(model)
    for batch in (1, 3, 6):
        x = _f((batch, 2, 5, 5), batch)
        labels = _i(np.arange(batch) % 3)
        result = session.run({"input": x}, labels)
        assert result.weights["w"].shape == (4, 2, 3, 3)
        check_gradients(model, {"input": x}, ["w", "fc", "fc_b"], ["input"], labels, seed=batch)


def test_gradient_is_the_mean_of_per_sample_gradients() -> None:
    model = _chain_model([("Tanh", {})])
    session = GradientSession(model)
    x, labels = _f((4, 2, 5, 5), 1), _i([0, 2, 1, 1])
    whole = session.run({"input": x}, labels)
    singles = [session.run({"input": x[i : i + 1]}, labels[i : i + 1]) for i in range(4)]
    for name, grad in whole.weights.items():
        mean = np.mean([s.weights[name] for s in singles], axis=0)
        np.testing.assert_allclose(grad, mean, rtol=1e-4, atol=1e-6)
    assert whole.loss == pytest.approx(np.mean([s.loss for s in singles]), rel=1e-5)


def test_loss_is_cross_entropy_and_pseudo_labels_use_top1() -> None:
    model = _chain_model([])
    x = _f((5, 2, 5, 5), 2)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"input": x})[0].astype(np.float64)
    log_probs = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1))[:, None]
    log_probs -= logits.max(1, keepdims=True)
    labels = _i([2, 0, 1, 1, 0])
    grad = GradientSession(model, wrt=["fc_b"])
    expected = -log_probs[np.arange(5), labels].mean()
    assert grad.run({"input": x}, labels).loss == pytest.approx(expected, rel=1e-5)
    top1 = logits.argmax(1)
    pseudo = grad.run({"input": x})
    assert pseudo.loss == pytest.approx(-log_probs[np.arange(5), top1].mean(), rel=1e-5)
    explicit = grad.run({"input": x}, top1)
    np.testing.assert_allclose(pseudo.weights["fc_b"], explicit.weights["fc_b"], rtol=1e-6)
    mixed = grad.run({"input": x}, np.where(np.arange(5) < 2, -1, top1))
    np.testing.assert_allclose(mixed.weights["fc_b"], explicit.weights["fc_b"], rtol=1e-6)


def test_backward_model_passes_the_checker() -> None:
    model = _chain_model([("Relu", {}), ("MaxPool", {"kernel_shape": [3, 3], "pads": [1] * 4})])
    built = build_gradient_model(model, activations=["t1"])
    onnx.checker.check_model(built.model, full_check=True)
    assert set(built.weight_grads) == {"w", "fc", "fc_b"}
    assert set(built.activation_grads) == set(built.activation_values) == {"t1"}


def test_activation_results_follow_the_documented_keys() -> None:
    model = _chain_model([("Relu", {})])
    x = _f((2, 2, 5, 5), 4)
    out = gradients(model, {"input": x}, labels=_i([0, 1]), wrt=["w"], activations=["t1"])
    assert set(out) == {"w", "grad:t1", "t1"}
    assert out["t1"].shape == out["grad:t1"].shape == (2, 4, 5, 5)
    assert (out["t1"] >= 0).all()


def test_op_without_rule_names_op_and_node() -> None:
    model = _chain_model([("Erf", {})])
    with pytest.raises(GradientUnavailable, match=r"Erf \(node 'n0'\)") as info:
        GradientSession(model)
    assert isinstance(info.value, PruneError)
    assert "gradient criteria are unavailable" in str(info.value)


def test_op_without_rule_off_the_requested_path_is_fine() -> None:
    # Only the head's weights are requested; the unknown op sits before them.
    model = _chain_model([("Erf", {})])
    out = gradients(model, {"input": _f((2, 2, 5, 5), 5)}, _i([0, 1]), wrt=["fc", "fc_b"])
    assert set(out) == {"fc", "fc_b"}


def test_custom_domain_op_is_reported() -> None:
    model = _chain_model([("Relu", {})])
    model.graph.node[1].domain = "com.example"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(GradientUnavailable, match="com.example::Relu"):
        build_gradient_model(model)


def test_unsupported_configuration_is_reported() -> None:
    model = _chain_model([("Resize", {})])
    node = model.graph.node[1]
    scales = numpy_helper.from_array(np.array([1, 1, 1, 1], np.float32), "scales")
    model.graph.initializer.append(scales)
    node.input.extend(["", "scales"])
    node.attribute.append(helper.make_attribute("mode", "linear"))
    with pytest.raises(GradientUnavailable, match="Resize mode 'linear'"):
        build_gradient_model(model)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        (
            Case(
                "Resize",
                [_f((1, 1, 2, 2)), None, np.array([1, 1, 2, 2], np.float32)],
                {"mode": "nearest"},
                opset=13,
                frozen=(2,),
            ),
            "opset >= 16",
        ),
        (
            Case(
                "ConvTranspose",
                [_f((1, 2, 3, 3)), _f((2, 2, 3, 3))],
                {"output_shape": [5, 5], "strides": [2, 2]},
            ),
            "output_shape",
        ),
        (Case("Pad", [_d((2, 3)), _i([1, 1, 1, 1])], {"mode": "reflect"}), "reflect"),
    ],
    ids=["resize_opset13", "convtranspose_output_shape", "pad_reflect"],
)
def test_unsupported_configurations_name_the_node(case: Case, message: str) -> None:
    model, feeds, weights = _op_model(case)
    model = _with_head(model, feeds, 0)
    with pytest.raises(GradientUnavailable, match=message) as info:
        build_gradient_model(model, wrt=weights, activations=list(feeds))
    assert f"{case.op} node 'the_{case.op}'" in str(info.value)


def test_training_mode_batchnorm_is_refused() -> None:
    params = [numpy_helper.from_array(np.ones(3), n) for n in ("s", "b", "m", "v")]
    head = numpy_helper.from_array(_d((6, CLASSES)), "head")
    nodes = [
        helper.make_node(
            "BatchNormalization",
            ["x", "s", "b", "m", "v"],
            ["y", "rm", "rv"],
            name="bn",
            training_mode=1,
        ),
        helper.make_node("Flatten", ["y"], ["flat"], axis=0),
        helper.make_node("MatMul", ["flat", "head"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "bn",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3])],
        [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, [1, CLASSES])],
        [*params, head],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(GradientUnavailable, match="BatchNormalization node 'bn': training-mode"):
        build_gradient_model(model)


def test_unknown_names_are_usage_errors() -> None:
    model = _chain_model([])
    with pytest.raises(PruneError, match="not an initializer"):
        build_gradient_model(model, wrt=["nope"])
    with pytest.raises(PruneError, match="not a tensor computed"):
        build_gradient_model(model, activations=["w"])


def test_old_opset_is_upgraded() -> None:
    check_case(Case("Squeeze", [_d((2, 1, 3), 4)], {"axes": [1]}, opset=11))


def test_bad_labels_and_feeds_are_calibration_errors() -> None:
    session = GradientSession(_chain_model([]), wrt=["fc_b"])
    x = _f((2, 2, 5, 5))
    with pytest.raises(CalibrationError, match="below 3"):
        session.run({"input": x}, _i([0, 3]))
    with pytest.raises(CalibrationError, match="1 labels for a batch of 2"):
        session.run({"input": x}, _i([0]))
    with pytest.raises(CalibrationError, match="one entry per sample"):
        session.run({"input": x}, _i([0, 1, 2]))
    with pytest.raises(CalibrationError, match="integers"):
        session.run({"input": x}, np.array([0.0, 1.0]))
    with pytest.raises(CalibrationError, match="missing"):
        session.run({}, None)
    with pytest.raises(CalibrationError, match="unknown"):
        session.run({"input": x, "other": x})
    with pytest.raises(CalibrationError, match="rejected"):
        session.run({"input": x.astype(np.float64)})


def test_weight_used_twice_gets_both_contributions() -> None:
    w = numpy_helper.from_array(_d((4, 4), 1) * 0.5, "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Tanh", ["h"], ["t"]),
        helper.make_node("MatMul", ["t", "w"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "shared",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.DOUBLE, ["N", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    check_gradients(model, {"x": _d((3, 4), 2)}, ["w"], ["x"], _i([0, 3, 1]), entries=8)


def _random_chain(draw) -> tuple[onnx.ModelProto, dict[str, np.ndarray], list[str]]:
    """input [2, 3, 4] → 1..4 random smooth/broadcasting ops with weights → op output."""
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    shape = [2, 3, 4]
    nodes, inits, weights = [], [], []
    current = "x"
    for step in range(draw(st.integers(1, 4))):
        op = draw(
            st.sampled_from(
                [
                    "Tanh",
                    "Sigmoid",
                    "Softmax",
                    "Transpose",
                    "Mul",
                    "Add",
                    "Div",
                    "MatMul",
                    "ReduceSum",
                    "Concat",
                ]
            )
        )
        out, attrs, extra = f"s{step}", {}, []
        if op in ("Mul", "Add", "Div"):
            keep = draw(st.integers(0, len(shape)))
            wshape = [d if draw(st.booleans()) else 1 for d in shape[len(shape) - keep :]]
            value = rng.normal(size=wshape)
            if op == "Div":
                value = np.sign(value) * (np.abs(value) + 0.5)
            extra = [f"w{step}"]
            inits.append(numpy_helper.from_array(value, extra[0]))
            weights.append(extra[0])
            swap = op != "Div" and draw(st.booleans())
            inputs = [extra[0], current] if swap else [current, extra[0]]
        elif op == "MatMul":
            k = draw(st.integers(1, 4))
            extra = [f"w{step}"]
            inits.append(numpy_helper.from_array(rng.normal(size=(shape[-1], k)), extra[0]))
            weights.append(extra[0])
            inputs = [current, extra[0]]
            shape = [*shape[:-1], k]
        elif op == "Transpose":
            perm = list(rng.permutation(len(shape)))
            attrs = {"perm": [int(p) for p in perm]}
            shape = [shape[p] for p in perm]
            inputs = [current]
        elif op == "Softmax":
            attrs = {"axis": draw(st.integers(-len(shape), len(shape) - 1))}
            inputs = [current]
        elif op == "ReduceSum":
            if len(shape) == 1:
                continue
            axis = draw(st.integers(0, len(shape) - 1))
            keep = draw(st.booleans())
            inputs = [current, f"axes{step}"]
            inits.append(numpy_helper.from_array(np.array([axis], np.int64), inputs[1]))
            attrs = {"keepdims": int(keep)}
            shape = [d for i, d in enumerate(shape) if i != axis or keep]
            shape = [1 if i == axis and keep else d for i, d in enumerate(shape)]
        elif op == "Concat":
            extra = [f"w{step}"]
            inits.append(numpy_helper.from_array(rng.normal(size=shape), extra[0]))
            weights.append(extra[0])
            axis = draw(st.integers(0, len(shape) - 1))
            attrs = {"axis": axis}
            inputs = [current, extra[0]]
            shape = [d * 2 if i == axis else d for i, d in enumerate(shape)]
        else:
            inputs = [current]
        nodes.append(helper.make_node(op, inputs, [out], **attrs))
        current = out
    if not nodes:
        nodes.append(helper.make_node("Identity", ["x"], ["s0"]))
        current = "s0"
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [2, 3, 4])],
        [onnx.ValueInfoProto(name=current)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model, {"x": rng.normal(size=(2, 3, 4))}, weights


@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(st.data())
def test_random_op_chains_match_finite_differences(data) -> None:
    model, feeds, weights = _random_chain(data.draw)
    model = _with_head(model, feeds, 0)
    check_gradients(model, feeds, weights, ["x"], _i([1]), entries=4)
