"""Layer sensitivity: how much a group's consumers lose when its channels go, after re-fit.

For every layer that reads a prunable group we accumulate the Gram matrix G = XᵀX
of its (unfolded) input on calibration data. Removing the channels whose columns
are S and re-fitting the layer on the kept columns K leaves the error

    E(K) = tr(W G Wᵀ) − tr(W G[:,K] G[K,K]⁻¹ G[K,:] Wᵀ)

(the Schur complement), reported relative to tr(W G Wᵀ), the layer's output energy.
That is exactly the quantity reconstruction minimises, so the curve says what a
ratio costs *after* repair, at the price of one calibration pass.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import scipy.linalg
from onnx import helper, numpy_helper

from onnxprune.depgraph import Group
from onnxprune.fidelity import session
from onnxprune.plan import kept_count
from onnxprune.probe import probe_model
from onnxprune.unfold import Conv2dGeometry, unfold


@dataclass
class Consumer:
    """A layer reading a group's channels: its weight as [out, in-columns]."""

    node: str
    input: str
    weight: np.ndarray  # [out, d]
    conv: tuple[dict, tuple[int, ...]] | None  # (attributes, kernel) for Conv inputs
    columns: np.ndarray  # [C, m]: unfolded columns owned by each group channel


@dataclass
class Curve:
    group: int
    ratios: list[float]
    errors: list[float]  # mean relative re-fit error over the consumers


def consumers_of(group: Group, model: onnx.ModelProto) -> list[Consumer]:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = {n.name: n for n in model.graph.node}
    found = []
    for param in group.params:
        if param.role != "in" or param.node not in nodes:
            continue
        node = nodes[param.node]
        weight = inits[param.initializer].astype(np.float64)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv" and weight.ndim == 4 and attrs.get("group", 1) == 1:
            per = int(np.prod(weight.shape[2:]))
            cols = (param.positions[:, :, None] * per + np.arange(per)).reshape(
                param.positions.shape[0], -1
            )
            conv = (attrs, tuple(weight.shape[2:]))
            flat = weight.reshape(weight.shape[0], -1)
            found.append(Consumer(node.name, node.input[0], flat, conv, cols))
        elif node.op_type == "Gemm" and not attrs.get("transA", 0):
            matrix = weight if attrs.get("transB", 0) else weight.T
            found.append(Consumer(node.name, node.input[0], matrix, None, param.positions))
        elif node.op_type == "MatMul" and weight.ndim == 2:
            found.append(Consumer(node.name, node.input[0], weight.T, None, param.positions))
    return found


def gram_matrices(
    model: onnx.ModelProto,
    consumers: Sequence[Consumer],
    batches: Iterable[dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """XᵀX of every consumer's unfolded input, accumulated batch by batch (float64)."""
    names = sorted({c.input for c in consumers})
    probe = probe_model(model, fetch=names)
    sess = session(probe, probe=True)
    grams: dict[str, np.ndarray] = {}
    for feeds in batches:
        values = dict(zip(names, sess.run(names, feeds), strict=True))
        for c in consumers:
            x = values[c.input]
            if c.conv is not None:
                rows = unfold(x, Conv2dGeometry.from_attrs(c.conv[0], c.conv[1], x.shape[2:]))
            else:
                rows = x.reshape(-1, x.shape[-1])
            rows = rows.astype(np.float32, copy=False)  # sgemm per batch, float64 across
            gram = (rows.T @ rows).astype(np.float64)
            grams[c.node] = grams[c.node] + gram if c.node in grams else gram
    return grams


def prefix_errors(gram: np.ndarray, weight: np.ndarray, column_order: np.ndarray) -> np.ndarray:
    """Relative re-fit error when keeping each prefix of `column_order` (all prefixes at once).

    With G permuted so the kept columns come first, G = L Lᵀ, its leading block is
    the Cholesky factor of G[K,K]; and Z = L⁻¹·G·Wᵀ restricted to its first k rows is
    L_k⁻¹·G[K,:]·Wᵀ. So the explained energy of prefix k is ‖Z[:k]‖², a cumulative
    sum: one factorisation instead of one solve per ratio. Returns errors[k] for
    k = 0..len(column_order).
    """
    energy = float(np.sum(weight * (weight @ gram)))
    if energy <= 0:
        return np.zeros(len(column_order) + 1)
    g = gram[np.ix_(column_order, column_order)]
    factor = _cholesky(g)
    b = gram[column_order] @ weight.T  # [d, out]
    z = scipy.linalg.solve_triangular(factor, b, lower=True, check_finite=False)
    explained = np.concatenate([[0.0], np.cumsum(np.sum(z * z, axis=1))])
    return np.clip((energy - explained) / energy, 0.0, 1.0)


def _cholesky(gram: np.ndarray) -> np.ndarray:
    """Lower Cholesky factor of a PSD Gram, with the smallest jitter that makes it PD.

    Gram matrices of real activations are often singular (an input pixel that is
    always zero, a dead channel); a relative jitter of 1e-9..1e-3 of the mean
    diagonal changes the re-fit errors far below what the allocation can see.
    """
    scale = float(np.trace(gram)) / max(gram.shape[0], 1) or 1.0
    for jitter in (1e-9, 1e-7, 1e-5, 1e-3):
        try:
            return scipy.linalg.cholesky(
                gram + jitter * scale * np.eye(gram.shape[0]), lower=True, check_finite=False
            )
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Gram matrix is not positive semi-definite")


def group_curve(
    group: Group,
    consumers: Sequence[Consumer],
    grams: Mapping[str, np.ndarray],
    scores: np.ndarray,
    ratios: Sequence[float],
) -> Curve:
    """Mean relative re-fit error of the group's consumers at each ratio."""
    order = np.argsort(-scores, kind="stable")  # most important channel first
    kept = [kept_count(group.channels, ratio, 1) for ratio in ratios]
    per_consumer = []
    for c in consumers:
        if c.node not in grams:
            continue
        d = c.weight.shape[1]
        owned = c.columns[order]  # [C, m] columns, most important channel first
        others = np.setdiff1d(np.arange(d), owned.reshape(-1))  # never removed
        column_order = np.concatenate([others, owned.reshape(-1)])
        errors = prefix_errors(grams[c.node], c.weight, column_order)
        per_consumer.append([errors[len(others) + k * owned.shape[1]] for k in kept])
    mean = np.mean(per_consumer, axis=0) if per_consumer else np.zeros(len(ratios))
    return Curve(group.id, list(ratios), [float(e) for e in mean])
