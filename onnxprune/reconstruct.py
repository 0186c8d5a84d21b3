"""Repair a structurally pruned model by sequential least squares (no training framework).

For each layer that lost input channels, in topological order, its weights and bias
are re-fit so that its output on the calibration inputs matches the dense model's,
given the *already repaired* pruned activations as input (errors do not compound).
Facts this follows (../shared/reference/RECONSTRUCTION.md): only a full weight
re-fit closes the gap; BatchNorm is folded into the layer first; a layer that ends
a residual branch is fit to the dense sum minus the pruned other branch; ridge
damping λ = λ_rel·mean diag(XᵀX), larger when rows ≈ columns.

The ridge term pulls towards the layer's current weights, so the fitted layer's
error on the calibration data is never above the unrepaired layer's.
Statistics are accumulated batch by batch (XᵀX, XᵀY, sums): memory is independent
of the number of calibration samples. Both onnxruntime sessions are built once;
the pruned one takes the weights being fit as inputs, so updates need no rebuild.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import scipy.linalg
from onnx import helper, numpy_helper
from tqdm import tqdm

from onnxprune.fidelity import session
from onnxprune.probe import probe_model
from onnxprune.unfold import Conv2dGeometry, rows_of, unfold

log = logging.getLogger("onnxprune")

Batches = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass
class Layer:
    """A Conv/Gemm/MatMul to re-fit, seen as Y = X·Wᵀ + b on unfolded rows."""

    node: onnx.NodeProto
    kind: str  # "conv" | "gemm" | "matmul"
    weight: str
    bias: str | None
    input: str
    output: str
    partners: list[str] = field(default_factory=list)  # other addends of a residual sum
    target: str = ""  # dense tensor the (layer output + partners) must match


@dataclass
class LayerFit:
    node: str
    rows: int
    columns: int
    damping: float
    error_before: float  # relative squared error on calibration data
    error_after: float
    target: str


class _Sums:
    """Streaming sufficient statistics of a least-squares problem."""

    def __init__(self, d: int, o: int) -> None:
        self.n = 0
        self.sx = np.zeros(d)
        self.sy = np.zeros(o)
        self.sxx = np.zeros((d, d))
        self.sxy = np.zeros((d, o))
        self.syy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        # Per-batch products in float32 (BLAS sgemm, ~2x dgemm); sums across batches
        # in float64, so rounding does not grow with the number of samples.
        x32, y32 = x.astype(np.float32, copy=False), y.astype(np.float32, copy=False)
        self.n += x.shape[0]
        self.sx += x32.sum(0, dtype=np.float64)
        self.sy += y32.sum(0, dtype=np.float64)
        self.sxx += x32.T @ x32
        self.sxy += x32.T @ y32
        self.syy += float(np.sum(np.square(y32, dtype=np.float64)))


def solve_ridge(
    sums: _Sums, w0: np.ndarray, b0: np.ndarray | None, rel_damping: float
) -> tuple[np.ndarray, np.ndarray | None, float, float, float]:
    """Ridge LS towards w0 ([d, o]); with an intercept when b0 is given.

    Returns (W, b, λ, error before, error after) with errors relative to ‖Y - mean‖².
    """
    n = max(sums.n, 1)
    if b0 is not None:
        mx, my = sums.sx / n, sums.sy / n
        gram = sums.sxx - n * np.outer(mx, mx)
        cross = sums.sxy - n * np.outer(mx, my)
        total = sums.syy - n * float(my @ my)
    else:
        mx, my = np.zeros_like(sums.sx), np.zeros_like(sums.sy)
        gram, cross, total = sums.sxx, sums.sxy, sums.syy
    diag_mean = float(np.mean(np.diag(gram))) if gram.size else 0.0
    lam = rel_damping * (diag_mean if diag_mean > 0 else 1.0)
    system = gram + lam * np.eye(gram.shape[0])
    w = scipy.linalg.solve(system, cross + lam * w0, assume_a="pos", check_finite=False)

    def residual(wm: np.ndarray) -> float:
        # ‖Xc W - Yc‖² = tr(WᵀGW) - 2 tr(WᵀC) + ‖Yc‖²
        return float(np.sum(wm * (gram @ wm)) - 2 * np.sum(wm * cross) + total)

    scale = total if total > 0 else 1.0
    # Sums-based residuals cancel near a perfect fit; an error is never negative.
    before = max(residual(w0) / scale, 0.0)
    after = max(residual(w) / scale, 0.0)
    b = (my - mx @ w) if b0 is not None else None
    return w, b, lam, before, after


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def fold_batchnorms(model: onnx.ModelProto, layer_names: set[str]) -> None:
    """Fold a BatchNormalization that alone consumes a layer's output into that layer."""
    inits = _inits(model)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    removed: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node.name not in layer_names or node.op_type not in ("Conv", "Gemm"):
            continue
        users = consumers.get(node.output[0], [])
        if len(users) != 1 or users[0].op_type != "BatchNormalization":
            continue
        bn = users[0]
        if node.output[0] in outputs or len(bn.output) > 1 and any(bn.output[1:]):
            continue
        if not all(name in inits for name in bn.input[1:5]):
            continue
        gamma, beta, mean, var = (inits[n].astype(np.float64) for n in bn.input[1:5])
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        weight_name = node.input[1]
        weight = inits[weight_name].astype(np.float64)
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        if node.op_type == "Gemm" and not trans_b:
            weight = weight * scale[None, :]
        else:
            weight = weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1))
        bias_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
        bias = inits[bias_name].astype(np.float64) if bias_name else np.zeros_like(mean)
        new_bias = (bias.reshape(-1) - mean) * scale + beta
        dtype = inits[weight_name].dtype
        _set_init(model, weight_name, weight.astype(dtype))
        if bias_name is None:
            bias_name = _unique_name(model, f"{node.name}.bias")
            while len(node.input) < 3:
                node.input.append("")
            node.input[2] = bias_name
        _set_init(model, bias_name, new_bias.astype(dtype))
        node.output[0] = bn.output[0]
        removed.append(bn)
    for bn in removed:
        model.graph.node.remove(bn)
    _drop_unused_initializers(model)


def _set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(tensor)
            return
    model.graph.initializer.append(tensor)


def _unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {i.name for i in model.graph.initializer}
    taken |= {o for n in model.graph.node for o in n.output}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= {o.name for o in model.graph.output}
    keep = [i for i in model.graph.initializer if i.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def find_layers(model: onnx.ModelProto, layer_names: set[str]) -> list[Layer]:
    """The layers to fit, in graph order, with residual targets where a branch ends in a sum."""
    inits = _inits(model)
    graph_inputs = {i.name for i in model.graph.input}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    layers: list[Layer] = []
    for node in model.graph.node:
        if node.name not in layer_names or node.input[0] in graph_inputs:
            continue
        layer = _as_layer(node, inits)
        if layer is not None:
            layers.append(layer)
    by_output = {layer.output: layer for layer in layers}
    position = {layer.node.name: i for i, layer in enumerate(layers)}
    for layer in layers:
        layer.target = layer.output
        users = consumers.get(layer.output, [])
        if len(users) != 1 or users[0].op_type not in ("Add", "Sum"):
            continue
        add = users[0]
        others = [name for name in add.input if name != layer.output]
        if any(name in inits for name in others):
            continue  # a constant addend is a bias, not a residual branch
        # Among several fitted branches of one sum, only the last fits the sum.
        rivals = [by_output[n] for n in others if n in by_output]
        if any(position[r.node.name] > position[layer.node.name] for r in rivals):
            continue
        layer.partners = others
        layer.target = add.output[0]
    return layers


def _as_layer(node: onnx.NodeProto, inits: Mapping[str, np.ndarray]) -> Layer | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if len(node.input) < 2 or node.input[1] not in inits:
        return None
    bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
    if node.op_type == "Conv":
        if attrs.get("group", 1) != 1 or inits[node.input[1]].ndim != 4:
            return None
        return Layer(node, "conv", node.input[1], bias, node.input[0], node.output[0])
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            return None
        if attrs.get("beta", 1.0) != 1.0 or (bias and inits[bias].ndim > 1):
            return None
        return Layer(node, "gemm", node.input[1], bias, node.input[0], node.output[0])
    if node.op_type == "MatMul" and inits[node.input[1]].ndim == 2:
        return Layer(node, "matmul", node.input[1], None, node.input[0], node.output[0])
    return None


def _as_matrix(layer: Layer, weight: np.ndarray) -> np.ndarray:
    """Layer weight as [d_in, d_out] (the LS unknown)."""
    if layer.kind == "conv":
        return weight.reshape(weight.shape[0], -1).T
    if layer.kind == "gemm":
        trans_b = next((a.i for a in layer.node.attribute if a.name == "transB"), 0)
        return weight.T if trans_b else weight
    return weight


def _from_matrix(layer: Layer, matrix: np.ndarray, like: np.ndarray) -> np.ndarray:
    if layer.kind == "conv":
        return matrix.T.reshape(like.shape)
    if layer.kind == "gemm":
        trans_b = next((a.i for a in layer.node.attribute if a.name == "transB"), 0)
        return matrix.T if trans_b else matrix
    return matrix


def _rows_in(layer: Layer, x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    if layer.kind == "conv":
        attrs = {a.name: helper.get_attribute_value(a) for a in layer.node.attribute}
        geo = Conv2dGeometry.from_attrs(attrs, weight.shape[2:], x.shape[2:])
        return unfold(x, geo)
    return x.reshape(-1, x.shape[-1])


def _rows_out(layer: Layer, y: np.ndarray) -> np.ndarray:
    return y.reshape(-1, y.shape[-1]) if layer.kind == "matmul" else rows_of(y)


def reconstruct(
    pruned: onnx.ModelProto,
    dense: onnx.ModelProto,
    layer_names: set[str],
    kept: Callable[[str], tuple[int, np.ndarray] | None],
    batches: Batches,
    rel_damping: float = 1e-3,
    progress: bool = True,
) -> tuple[onnx.ModelProto, list[LayerFit]]:
    """Re-fit `layer_names` of `pruned` to match `dense` on the calibration batches.

    `kept(tensor)` gives (axis, dense indices that survive on it) for a tensor whose
    channels were pruned, else None.
    """
    model = copy.deepcopy(pruned)
    fold_batchnorms(model, layer_names)
    layers = find_layers(model, layer_names)
    if not layers:
        return model, []
    inits = _inits(model)
    for layer in layers:
        if layer.bias is None and layer.kind != "matmul":
            layer.bias = _unique_name(model, f"{layer.node.name}.bias")
            out_dim = _as_matrix(layer, inits[layer.weight]).shape[1]
            inits[layer.bias] = np.zeros(out_dim, dtype=inits[layer.weight].dtype)
            _set_init(model, layer.bias, inits[layer.bias])
            while len(layer.node.input) < 3:
                layer.node.input.append("")
            layer.node.input[2] = layer.bias
    params = [p for layer in layers for p in (layer.weight, layer.bias) if p]
    probes = sorted({n for layer in layers for n in (layer.input, *layer.partners)})
    pruned_sess = session(probe_model(model, params, probes), probe=True)
    targets = sorted({layer.target for layer in layers})
    dense_sess = session(probe_model(dense, [], targets), probe=True)
    fits: list[LayerFit] = []
    for layer in tqdm(
        layers, desc="reconstruct", unit="layer", disable=not progress or None, leave=False
    ):
        fits.append(
            _fit_layer(layer, inits, params, pruned_sess, dense_sess, kept, batches, rel_damping)
        )
    for name in params:
        _set_init(model, name, inits[name])
    return model, fits


def _fit_layer(layer, inits, params, pruned_sess, dense_sess, kept, batches, rel_damping):
    weight = inits[layer.weight]
    w0 = _as_matrix(layer, weight).astype(np.float64)
    b0 = inits[layer.bias].astype(np.float64).reshape(-1) if layer.bias else None
    sums = _Sums(*w0.shape)
    for feeds in batches():
        run_feeds = dict(feeds)
        run_feeds.update({name: inits[name] for name in params})
        fetched = pruned_sess.run([layer.input, *layer.partners], run_feeds)
        x_rows = _rows_in(layer, fetched[0], weight)
        (dense_y,) = dense_sess.run([layer.target], dict(feeds))
        survivors = kept(layer.target)
        if survivors is not None:
            dense_y = np.take(dense_y, survivors[1], axis=survivors[0])
        y_rows = _rows_out(layer, dense_y).astype(np.float64)
        for partner in fetched[1:]:
            y_rows = y_rows - _rows_out(layer, partner)
        sums.add(x_rows, y_rows)
    damping = rel_damping
    if sums.n < 2 * w0.shape[0]:
        damping = max(rel_damping, 1e-2)  # near the interpolation threshold: damp more
        log.warning(
            "reconstruct: layer '%s' has %d rows for %d unknowns per output; add calibration "
            "samples for a reliable fit",
            layer.node.name,
            sums.n,
            w0.shape[0],
        )
    w, b, lam, before, after = solve_ridge(sums, w0, b0, damping)
    inits[layer.weight] = _from_matrix(layer, w, weight).astype(weight.dtype)
    if layer.bias:
        inits[layer.bias] = b.astype(weight.dtype).reshape(inits[layer.bias].shape)
    return LayerFit(layer.node.name, sums.n, w0.shape[0], lam, before, after, layer.target)
