"""Connection pruning of a whole model: which layers, how sparse each, by which criterion.

`onnxprune.unstructured` holds the math on one [out, in] matrix; this module finds the
Conv/ConvTranspose/Gemm/MatMul layers of a model whose weights may lose connections,
gives each its target (--weights, --nm, or a --layer-ratio override) and applies the
criterion: magnitude (Han's per-layer threshold), global (one magnitude threshold), or
the calibration criteria wanda and obs, which run layer after layer on the already
sparse model (`onnxprune.sequential`). Layers that cannot be pruned are reported with
the reason, never silently skipped.
"""

from __future__ import annotations

import copy
import fnmatch
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.errors import UsageError
from onnxprune.plan import parse_glob_ratio
from onnxprune.sequential import Batches, StatLayer, Sums, obs_fit, prune_sequential, wanda_fit
from onnxprune.sparse import to_matrix
from onnxprune.unstructured import (
    NM,
    check_sparsity,
    global_magnitude_masks,
    han_mask,
    han_quality_for_sparsity,
    magnitude_mask,
)

log = logging.getLogger("onnxprune")

CRITERIA = ("magnitude", "global", "wanda", "obs")
NEEDS_CALIBRATION = ("wanda", "obs")
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_FLOAT_TYPES = (
    onnx.TensorProto.FLOAT,
    onnx.TensorProto.FLOAT16,
    onnx.TensorProto.DOUBLE,
    onnx.TensorProto.BFLOAT16,
)


@dataclass(frozen=True)
class WeightsConfig:
    """What to prune: a sparsity (or N:M) per layer, by which criterion."""

    sparsity: float = 0.0
    criterion: str = "magnitude"
    nm: NM | None = None
    layer_ratio: tuple[tuple[str, float], ...] = ()  # (glob, sparsity), first match wins
    exclude: tuple[str, ...] = ()
    sequential: bool = True  # statistics from the already-sparsified model (SparseGPT)
    percdamp: float = 0.01  # OBS/least-squares damping, relative to mean diag(XᵀX)
    blocksize: int = 128  # OBS column block
    wanda_per_row: bool = True  # Wanda compares weights within an output row

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity)
        if self.criterion not in CRITERIA:
            raise UsageError(
                f"unknown weight criterion '{self.criterion}'; valid: {', '.join(CRITERIA)}"
            )
        if self.nm is not None and self.sparsity > 0:
            raise UsageError("give either --weights or --nm, not both (N:M fixes the sparsity)")
        for _, value in self.layer_ratio:
            check_sparsity(value)


@dataclass
class Layer:
    """A layer whose constant weight can lose connections, and how to see it as [out, in]."""

    node: str
    op: str
    weight: str
    input: str
    output: str
    view: str  # "conv" | "conv_t" | "fc" | "fc_t": how the weight becomes [out, in]
    attrs: dict[str, Any] = field(default_factory=dict)
    rows: str | None = None  # how its input becomes rows; None: no input statistics
    stats_reason: str | None = None  # why not
    bias: str | None = None  # 1-D bias initializer, if any
    dense_target: bool = False  # its output can be fit to the dense model's

    @property
    def blob_kind(self) -> str:
        """The `onnxprune.sparse` view the blobs use (ConvTranspose: rows = axis 0)."""
        return "conv" if self.view in ("conv", "conv_t") else self.view


@dataclass(frozen=True)
class Target:
    sparsity: float
    nm: NM | None
    source: str  # the flag that set it


# choosing layers ----------------------------------------------------------------------


def split_layer_ratios(
    texts: Sequence[str], filters_given: bool, weights_given: bool
) -> tuple[tuple[str, ...], tuple[tuple[str, float], ...]]:
    """Route each --layer-ratio to filter allocation or to connection pruning.

    'filters:GLOB=R' and 'weights:GLOB=S' say where they go. An unprefixed one goes to
    whichever of --filters/--target-macs and --weights/--nm was given (to filters when
    neither was), and is refused as ambiguous when both were.
    """
    filters: list[str] = []
    weights: list[tuple[str, float]] = []
    for text in texts:
        head, sep, rest = text.partition(":")
        if sep and head == "weights":
            weights.append(parse_glob_ratio(rest, letter="S"))
        elif sep and head == "filters":
            filters.append(rest)
        elif filters_given and weights_given:
            raise UsageError(
                f"--layer-ratio '{text}' is ambiguous with both --filters and --weights; "
                f"write 'filters:{text}' or 'weights:{text}'"
            )
        elif weights_given:
            weights.append(parse_glob_ratio(text, letter="S"))
        else:
            filters.append(text)
    return tuple(filters), tuple(weights)


def find_layers(
    model: onnx.ModelProto, exclude: Sequence[str] = ()
) -> tuple[list[Layer], list[dict[str, str]]]:
    """Every Conv/ConvTranspose/Gemm/MatMul with a constant float weight of its own, and
    the others as report rows (node, op, weight, reason)."""
    inits = {i.name: i for i in model.graph.initializer}
    readers = _readers(model)
    layers: list[Layer] = []
    skipped: list[dict[str, str]] = []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        weight = node.input[1]
        pattern = next((p for p in exclude if _matches(p, node.name, weight)), None)
        reason = None
        if pattern is not None:
            reason = f"excluded by --exclude '{pattern}'"
        elif node.op_type == "MatMul" and weight not in inits and node.input[0] in inits:
            weight, reason = node.input[0], "the constant is the first MatMul operand"
        elif weight not in inits:
            reason = "weight is not a constant initializer"
        elif inits[weight].data_type not in _FLOAT_TYPES:
            dtype = np.dtype(helper.tensor_dtype_to_np_dtype(inits[weight].data_type))
            reason = f"weight dtype {dtype.name} is not floating point"
        elif readers.get(weight, 0) > 1:
            reason = "weight is shared with other nodes"
        if reason:
            skipped.append(_skip(node.name, node.op_type, weight, reason))
            continue
        layers.append(_layer(node, weight, inits, readers))
    return layers, skipped


def _readers(model: onnx.ModelProto) -> dict[str, int]:
    """How many times each tensor is read: node inputs, subgraph bodies, graph outputs."""
    counts: dict[str, int] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for node in graph.node:
            for name in node.input:
                if name:
                    counts[name] = counts.get(name, 0) + 1
            for attr in node.attribute:
                for body in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    visit(body)
        for out in graph.output:
            counts[out.name] = counts.get(out.name, 0) + 1

    visit(model.graph)
    return counts


def _skip(node: str, op: str, weight: str, reason: str) -> dict[str, str]:
    return {"node": node, "op": op, "weight": weight, "reason": reason}


def _matches(pattern: str, node: str, weight: str) -> bool:
    return fnmatch.fnmatchcase(node, pattern) or fnmatch.fnmatchcase(weight, pattern)


def _layer(node: onnx.NodeProto, weight: str, inits, readers) -> Layer:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    dims = list(inits[weight].dims)
    if node.op_type == "Gemm":
        view = "fc" if attrs.get("transB", 0) else "fc_t"
    else:
        view = {"Conv": "conv", "ConvTranspose": "conv_t", "MatMul": "fc_t"}[node.op_type]
    layer = Layer(node.name, node.op_type, weight, node.input[0], node.output[0], view, attrs)
    bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if bias in inits and len(inits[bias].dims) == 1 and readers.get(bias, 0) == 1:
        layer.bias = bias
    if node.input[0] in inits:
        layer.stats_reason = "the layer's input is a constant"
    elif node.op_type in ("Conv", "ConvTranspose") and attrs.get("group", 1) != 1:
        layer.stats_reason = "grouped convolution (per-group input statistics not implemented)"
    elif node.op_type == "Conv" and len(dims) != 4:
        layer.stats_reason = f"{len(dims) - 2}-D convolution (only 2-D inputs are unfolded)"
    elif node.op_type == "MatMul" and len(dims) != 2:
        layer.stats_reason = "batched MatMul weight"
    else:
        layer.rows = {"Conv": "conv2d", "ConvTranspose": "channels", "MatMul": "rows"}.get(
            node.op_type, "rows_t" if attrs.get("transA", 0) else "rows"
        )
    # The dense output is the target where the rows seen are exactly the layer's rows
    # (not ConvTranspose's overlap-add) and the weight enters unscaled.
    scaled = attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0
    odd_bias = bias is not None and layer.bias is None
    layer.dense_target = layer.rows in ("conv2d", "rows", "rows_t") and not scaled and not odd_bias
    return layer


# [out, in] views ----------------------------------------------------------------------


def to_view(w: np.ndarray, view: str) -> np.ndarray:
    """The [out, in] matrix of a weight: N:M groups and Wanda/OBS run along its rows."""
    if view == "conv_t":  # [I, O/g, kh, kw]: the inputs are axis 0
        return w.reshape(w.shape[0], -1).T
    return to_matrix(w, view)


def from_view(matrix: np.ndarray, shape: Sequence[int], view: str) -> np.ndarray:
    shape = tuple(int(d) for d in shape)
    if view == "conv_t":
        return np.ascontiguousarray(matrix.T).reshape(shape)
    if view == "fc_t":
        moved = matrix.reshape((shape[-1], *shape[:-1]))
        return np.ascontiguousarray(np.moveaxis(moved, 0, -1))
    return matrix.reshape(shape)


# targets ------------------------------------------------------------------------------


def layer_targets(
    layers: Sequence[Layer], config: WeightsConfig, weights: Mapping[str, np.ndarray]
) -> tuple[dict[str, Target], list[dict[str, str]]]:
    """The sparsity (or N:M) of every layer; layers left dense by their target, with why."""
    targets: dict[str, Target] = {}
    skipped: list[dict[str, str]] = []
    used: set[str] = set()
    for layer in layers:
        glob, ratio = next(
            ((g, r) for g, r in config.layer_ratio if _matches(g, layer.node, layer.weight)),
            (None, 0.0),
        )
        if glob is not None:
            used.add(glob)
            target = Target(ratio, None, f"--layer-ratio weights:{glob}")
        elif config.nm is not None:
            target = Target(0.0, config.nm, "--nm")
        else:
            target = Target(config.sparsity, None, "--weights")
        reason = None
        if target.nm is None and target.sparsity == 0.0:
            reason = f"sparsity 0 from {target.source}"
        elif target.nm is not None:
            cols = to_view(weights[layer.weight], layer.view).shape[1]
            if cols % target.nm[1]:
                reason = f"N:M needs the input dimension ({cols}) to be a multiple of M"
        if reason:
            skipped.append(_skip(layer.node, layer.op, layer.weight, reason))
            continue
        targets[layer.node] = target
    for glob, _ in config.layer_ratio:
        if glob not in used:
            log.warning("--layer-ratio 'weights:%s' matches no prunable layer", glob)
    return targets, skipped


# pruning ------------------------------------------------------------------------------


def prune_connections(
    model: onnx.ModelProto, config: WeightsConfig, batches: Batches | None = None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A copy of `model` with the requested connections zeroed (for obs: the remaining
    weights and biases re-fit), and the record of what was done per layer."""
    if config.criterion in NEEDS_CALIBRATION and batches is None:
        raise UsageError(f"--weight-criterion {config.criterion} needs calibration data (--calib)")
    model = copy.deepcopy(model)
    found, skipped = find_layers(model, config.exclude)
    params = {
        i.name: numpy_helper.to_array(i)
        for i in model.graph.initializer
        if i.name in {n for la in found for n in (la.weight, la.bias) if n}
    }
    targets, dense = layer_targets(found, config, params)
    skipped += dense
    layers = [la for la in found if la.node in targets]
    records: dict[str, dict[str, Any]] = {}
    calibrated = config.criterion in NEEDS_CALIBRATION
    with_stats = [la for la in layers if calibrated and la.rows is not None]
    plain = [la for la in layers if la not in with_stats]
    if config.criterion == "obs":
        _add_biases(model, [la for la in with_stats if la.dense_target], params)
    dense = {name: value.copy() for name, value in params.items()}
    _prune_plain(plain, targets, config, params, records)
    if with_stats:
        by_node = {la.node: la for la in with_stats}

        def solve(sl: StatLayer, sums: Sums) -> None:
            records[sl.node] = _prune_layer(by_node[sl.node], sl, sums, config, targets, params)

        prune_sequential(
            model,
            [_stat_layer(la, config, params) for la in with_stats],
            solve,
            params,
            dense,
            batches,
            full=config.criterion == "obs",
            sequential=config.sequential,
        )
    _set_initializers(model, params)
    record = {
        "criterion": config.criterion,
        "sparsity": config.sparsity,
        "nm": f"{config.nm[0]}:{config.nm[1]}" if config.nm else None,
        "sequential": config.sequential if with_stats else None,
        "layers": [records[la.node] for la in layers],
        "skipped": skipped,
    }
    return model, record


def _record(layer: Layer, target: Target, criterion: str, shape) -> dict[str, Any]:
    nm = target.nm
    return {
        "node": layer.node,
        "op": layer.op,
        "weight": layer.weight,
        "kind": layer.blob_kind,
        "shape": [int(d) for d in shape],
        "criterion": criterion,
        "target_sparsity": target.sparsity if nm is None else 1 - nm[0] / nm[1],
        "nm": f"{nm[0]}:{nm[1]}" if nm else None,
        "source": target.source,
    }


def zeroed(w: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """w where kept, +0.0 elsewhere (never -0.0, so fp32 blobs round-trip bit-exactly)."""
    out = np.where(keep, w, np.zeros((), dtype=w.dtype)).astype(w.dtype)
    out[out == 0] = 0
    return out


def _prune_plain(layers, targets, config, params, records) -> None:
    """Magnitude criteria: Han's per-layer threshold, or one global threshold."""
    shared = []
    if config.criterion == "global":
        shared = [la for la in layers if targets[la.node].source == "--weights"]
        masks = global_magnitude_masks(
            {la.weight: params[la.weight] for la in shared}, config.sparsity
        )
        for la in shared:
            records[la.node] = _record(la, targets[la.node], "global", params[la.weight].shape)
            params[la.weight] = zeroed(params[la.weight], masks[la.weight])
    for la in layers:
        if la in shared:
            continue
        target, w = targets[la.node], params[la.weight]
        rec = _record(la, target, "magnitude", w.shape)
        if config.criterion in NEEDS_CALIBRATION:
            rec["note"] = f"magnitude instead of {config.criterion}: {la.stats_reason}"
        if target.nm is not None:
            keep = from_view(magnitude_mask(to_view(w, la.view), nm=target.nm), w.shape, la.view)
        else:
            han = han_mask(w, han_quality_for_sparsity(w, target.sparsity))
            keep = han.keep
            rec["han_quality"] = round(han.quality, 6)
            rec["threshold"] = float(np.float32(han.threshold))
        params[la.weight] = zeroed(w, keep)
        records[la.node] = rec


def _add_biases(model: onnx.ModelProto, layers: Sequence[Layer], params) -> None:
    """A zero bias for Conv/Gemm layers fit with an intercept that have none (the dense
    model's outputs do not change)."""
    taken = {i.name for i in model.graph.initializer} | {
        o for n in model.graph.node for o in n.output
    }
    nodes = {n.name: n for n in model.graph.node}
    for la in layers:
        if la.bias is not None or la.op not in ("Conv", "Gemm"):
            continue
        name, k = f"{la.weight}.bias", 1
        while name in taken:
            name, k = f"{la.weight}.bias_{k}", k + 1
        taken.add(name)
        w = params[la.weight]
        out = to_view(w, la.view).shape[0]
        params[name] = np.zeros(out, dtype=w.dtype)
        model.graph.initializer.append(numpy_helper.from_array(params[name], name))
        node = nodes[la.node]
        while len(node.input) < 3:
            node.input.append("")
        node.input[2] = name
        la.bias = name


def _stat_layer(la: Layer, config: WeightsConfig, params) -> StatLayer:
    shape = params[la.weight].shape
    obs = config.criterion == "obs"
    return StatLayer(
        node=la.node,
        weight=la.weight,
        input=la.input,
        output=la.output,
        rows=la.rows,
        attrs=la.attrs,
        to_view=partial(to_view, view=la.view),
        from_view=partial(from_view, shape=shape, view=la.view),
        bias=la.bias if obs and la.dense_target else None,
        dense_target=obs and la.dense_target,
    )


def _prune_layer(layer: Layer, sl: StatLayer, sums: Sums, config, targets, params) -> dict:
    """Prune one layer from its statistics; update params; return its report record."""
    target, w = targets[layer.node], params[layer.weight]
    rec = _record(layer, target, config.criterion, w.shape)
    rec["calibration_rows"] = sums.n
    view = sl.to_view(w)
    if config.criterion == "wanda":
        keep = wanda_fit(
            view, sums, sparsity=target.sparsity, nm=target.nm, per_row=config.wanda_per_row
        )
        params[layer.weight] = zeroed(w, sl.from_view(keep))
        return rec
    fit = obs_fit(
        view,
        sums,
        sparsity=target.sparsity,
        nm=target.nm,
        intercept=sl.bias is not None,
        percdamp=config.percdamp,
        blocksize=config.blocksize,
    )
    params[layer.weight] = zeroed(sl.from_view(fit.weights).astype(w.dtype), sl.from_view(fit.keep))
    if fit.bias is not None:
        params[sl.bias] = fit.bias.astype(params[sl.bias].dtype)
        rec["bias"] = sl.bias
    rec["target"] = "dense model output" if sl.dense_target else "own output (SparseGPT)"
    rec["relative_error_before"] = round(fit.error_before, 6)
    rec["relative_error"] = round(fit.error_after, 6)
    rec["damping"] = fit.damping
    rec["exact_refit"] = fit.refit
    return rec


def _set_initializers(model: onnx.ModelProto, params: Mapping[str, np.ndarray]) -> None:
    for i, init in enumerate(model.graph.initializer):
        if init.name in params:
            tensor = numpy_helper.from_array(np.ascontiguousarray(params[init.name]), init.name)
            model.graph.initializer[i].CopyFrom(tensor)
