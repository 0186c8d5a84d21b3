"""Calibration-driven connection pruning, layer after layer (wanda, obs).

Statistics of a layer's input are taken from the model whose earlier layers are already
sparse, as SparseGPT does, so every layer compensates the error of those before it.
For `obs` the layer is also fit to the *dense* model's output (the model before
connection pruning) with an intercept:

    min ‖X_s W'ᵀ + b' − Y_d‖²  subject to W' having the target pattern

X_s: the layer's input in the sparsified model, Y_d: its output in the dense model. The
unconstrained ridge optimum W* is pruned by SparseGPT's OBS (mask chosen from
w²/[H⁻¹]_jj with H the centered XᵀX, errors pushed onto later columns), then every output
row's kept weights are re-fit exactly by least squares on that mask, and the bias takes
the mean. Without a usable output (ConvTranspose, whose output is an overlap-add of the
rows seen here) the target is the layer's own output on X_s and there is no intercept:
plain SparseGPT plus the exact re-fit.

One onnxruntime session serves all layers: every pruned weight (and fitted bias) is a
graph input, so the sparse and the dense model are the same session fed different
weights. Layers whose inputs do not depend on each other share one pass over the
calibration data (a wave); sums are accumulated batch by batch.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import scipy.linalg

from onnxprune.fidelity import session
from onnxprune.probe import probe_model
from onnxprune.unfold import Conv2dGeometry, rows_of, unfold
from onnxprune.unstructured import obs_prune, wanda_mask

log = logging.getLogger("onnxprune")

Batches = Callable[[], Iterable[dict[str, np.ndarray]]]
# Unfolded input rows held at once while accumulating (bounds memory per batch).
_ROW_ELEMENTS = 1 << 24
# Largest total cost (sum over rows of kept³) of the exact per-row re-fit of one layer.
_REFIT_BUDGET = 2e10
_SMALL = 1024


@dataclass
class StatLayer:
    """What the sequential pass needs of a layer (see connections.Layer)."""

    node: str
    weight: str
    input: str
    output: str
    rows: str  # "conv2d" | "channels" | "rows" | "rows_t": how inputs become rows
    attrs: dict[str, Any]
    to_view: Callable[[np.ndarray], np.ndarray]  # weight -> [out, in]
    from_view: Callable[[np.ndarray], np.ndarray]  # [out, in] -> weight
    bias: str | None = None  # fitted intercept (obs with dense targets)
    dense_target: bool = False  # fit to the dense model's output


class Sums:
    """Streaming sufficient statistics: n, Σx, Σxxᵀ (or Σx² only), Σy, Σxyᵀ, Σ‖y‖²."""

    def __init__(self, d: int, o: int, full: bool, targets: bool) -> None:
        self.n = 0
        self.sx = np.zeros(d)
        self.sumsq = np.zeros(d)
        self.sxx = np.zeros((d, d)) if full else None
        self.sy = np.zeros(o) if targets else None
        self.sxy = np.zeros((d, o)) if targets else None
        self.syy = 0.0

    def add(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        x = x.astype(np.float64, copy=False)
        self.n += x.shape[0]
        self.sx += x.sum(0)
        if self.sxx is not None:
            self.sxx += x.T @ x
        else:
            self.sumsq += np.einsum("ij,ij->j", x, x)
        if y is not None and self.sxy is not None:
            y = y.astype(np.float64, copy=False)
            self.sy += y.sum(0)
            self.sxy += x.T @ y
            self.syy += float(np.einsum("ij,ij->", y, y))

    def norms(self) -> np.ndarray:
        """‖X_j‖₂ of every input column (Wanda)."""
        return np.sqrt(np.diag(self.sxx) if self.sxx is not None else self.sumsq)


def waves(model: onnx.ModelProto, layers: Sequence[StatLayer]) -> list[list[StatLayer]]:
    """Layers grouped so that no layer's input depends on a layer of its own or a later wave."""
    names = {la.node for la in layers}
    upstream: dict[str, frozenset[str]] = {}
    level: dict[str, int] = {}
    for node in model.graph.node:
        reads = [upstream.get(n, frozenset()) for n in _reads(node)]
        ups: frozenset[str] = frozenset().union(*reads)
        if node.name in names:
            before = upstream.get(node.input[0], frozenset())
            level[node.name] = 1 + max((level[u] for u in before), default=-1)
            ups = ups | {node.name}
        for out in node.output:
            upstream[out] = ups
    grouped: dict[int, list[StatLayer]] = {}
    for la in layers:
        grouped.setdefault(level[la.node], []).append(la)
    return [grouped[k] for k in sorted(grouped)]


def _reads(node: onnx.NodeProto) -> list[str]:
    """Inputs of a node, including outer-scope names read inside its subgraphs."""
    names = [n for n in node.input if n]
    for attr in node.attribute:
        for body in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
            for inner in body.node:
                names.extend(_reads(inner))
    return names


def input_rows(layer: StatLayer, x: np.ndarray, kernel: Sequence[int]) -> Iterable[np.ndarray]:
    """The layer's input as rows whose columns match its [out, in] view, in chunks."""
    for part in _chunks(x, kernel) if layer.rows in ("conv2d", "channels") else [x]:
        if layer.rows == "rows_t":
            yield part.T
        elif layer.rows == "rows":
            yield part.reshape(-1, part.shape[-1])
        elif layer.rows == "channels":
            yield rows_of(part)
        else:
            yield unfold(part, Conv2dGeometry.from_attrs(layer.attrs, kernel, part.shape[2:]))


def output_rows(layer: StatLayer, y: np.ndarray, kernel: Sequence[int]) -> Iterable[np.ndarray]:
    """The layer's output as rows aligned with `input_rows` (sample, then positions)."""
    for part in _chunks(y, kernel) if layer.rows == "conv2d" else [y]:
        yield part.reshape(-1, part.shape[-1]) if layer.rows == "rows" else rows_of(part)


def _chunks(x: np.ndarray, kernel: Sequence[int]) -> Iterable[np.ndarray]:
    per_sample = max(1, int(np.prod(x.shape[1:])) * max(1, int(np.prod(kernel))))
    step = max(1, _ROW_ELEMENTS // per_sample)
    for start in range(0, x.shape[0], step):
        yield x[start : start + step]


def prune_sequential(
    model: onnx.ModelProto,
    layers: Sequence[StatLayer],
    prune: Callable[[StatLayer, Sums], dict[str, Any]],
    params: dict[str, np.ndarray],
    dense: Mapping[str, np.ndarray],
    batches: Batches,
    *,
    full: bool,
    sequential: bool = True,
) -> None:
    """Accumulate each layer's statistics wave by wave and call `prune(layer, sums)`, which
    updates `params` in place; later waves see the update.

    `params` (current) and `dense` (before connection pruning) hold the same initializers
    (every pruned layer's weight, every fitted bias); they are fed to one session.
    """
    graph_inputs = {i.name for i in model.graph.input}
    feeds = sorted(params)
    fetch = sorted({la.input for la in layers} | {la.output for la in layers if la.dense_target})
    sess = session(probe_model(model, feeds, sorted(set(fetch) - graph_inputs)), probe=True)
    order = waves(model, layers) if sequential else [list(layers)]
    for wave in order:
        sums = {}
        for la in wave:
            w = la.to_view(params[la.weight])
            sums[la.node] = Sums(w.shape[1], w.shape[0], full, la.dense_target)
        inputs = sorted({la.input for la in wave})
        outputs = sorted({la.output for la in wave if la.dense_target})
        for batch in batches():
            seen = _run(sess, inputs, batch, {n: params[n] for n in feeds}, graph_inputs)
            targets = _run(sess, outputs, batch, dense, graph_inputs) if outputs else {}
            for la in wave:
                kernel = params[la.weight].shape[2:]
                xs = input_rows(la, seen[la.input], kernel)
                if la.dense_target:
                    ys = output_rows(la, targets[la.output], kernel)
                    for x, y in zip(xs, ys, strict=True):
                        sums[la.node].add(x, y)
                else:
                    for x in xs:
                        sums[la.node].add(x)
        for la in wave:
            prune(la, sums[la.node])
        log.debug("weights: wave of %d layer(s) pruned", len(wave))


def _run(sess, names, batch, weights, graph_inputs) -> dict[str, np.ndarray]:
    feeds = {**batch, **weights}
    wanted = [n for n in names if n not in graph_inputs]
    values = dict(zip(wanted, sess.run(wanted, feeds), strict=True)) if wanted else {}
    values.update({n: batch[n] for n in names if n in graph_inputs})
    return values


# the per-layer solvers -------------------------------------------------------------------


@dataclass
class Fit:
    weights: np.ndarray  # [out, in], pruned
    keep: np.ndarray
    bias: np.ndarray | None
    damping: float
    error_before: float  # relative squared error of the dense weights on these inputs
    error_after: float
    refit: bool  # kept weights re-fit exactly per output row


def obs_fit(
    w0: np.ndarray,
    sums: Sums,
    *,
    sparsity: float,
    nm: tuple[int, int] | None,
    intercept: bool,
    percdamp: float,
    blocksize: int,
) -> Fit:
    """OBS pruning of `w0` ([out, in]) against the targets in `sums` (see module doc)."""
    # Up to ~1k inputs the factorisations are too small for BLAS threads to pay off.
    small = w0.shape[1] <= _SMALL
    with _single_threaded_blas() if small else contextlib.nullcontext():
        return _obs_fit(w0, sums, sparsity, nm, intercept, percdamp, blocksize)


def _obs_fit(w0, sums, sparsity, nm, intercept, percdamp, blocksize) -> Fit:
    w0 = w0.astype(np.float64)
    n = max(sums.n, 1)
    if sums.sxy is None:  # targets: the layer's own output on these inputs
        gram, cross, total = sums.sxx, sums.sxx @ w0.T, None
        mx = my = None
    elif intercept:
        mx, my = sums.sx / n, sums.sy / n
        gram = sums.sxx - n * np.outer(mx, mx)
        cross = sums.sxy - n * np.outer(mx, my)
        total = sums.syy - n * float(my @ my)
    else:
        mx = my = None
        gram, cross, total = sums.sxx, sums.sxy, sums.syy
    if total is None:
        total = float(np.einsum("ij,jk,ik->", w0, gram, w0))
    diag_mean = float(np.mean(np.diag(gram))) if gram.size else 0.0
    lam = percdamp * (diag_mean if diag_mean > 0 else 1.0)
    eye = np.eye(gram.shape[0])
    factor = scipy.linalg.cho_factor(gram + lam * eye, check_finite=False)
    best = scipy.linalg.cho_solve(factor, cross + lam * w0.T, check_finite=False).T
    result = obs_prune(best, gram, sparsity=sparsity, nm=nm, blocksize=blocksize, percdamp=percdamp)
    keep = result.keep
    weights = np.where(keep, result.weights, 0.0)
    refit = _refit_cost(keep) <= _REFIT_BUDGET
    if refit:
        weights = masked_least_squares(gram, cross, keep, lam, w0)
    bias = (my - weights @ mx) if intercept and mx is not None else None

    def error(w: np.ndarray) -> float:
        value = float(np.einsum("ij,jk,ik->", w, gram, w) - 2 * np.einsum("ij,ji->", w, cross))
        return max(0.0, (value + total) / total) if total > 0 else 0.0

    return Fit(weights, keep, bias, result.damping, error(w0), error(weights), refit)


def _refit_cost(keep: np.ndarray) -> float:
    return float(np.sum(keep.sum(axis=1).astype(np.float64) ** 3))


def masked_least_squares(
    gram: np.ndarray, cross: np.ndarray, keep: np.ndarray, lam: float, prior: np.ndarray
) -> np.ndarray:
    """Per output row r: the kept weights K minimising ‖X w_K − y_r‖² + λ‖w_K − prior_K‖².

    The systems are small and many, so BLAS runs single-threaded here: threads only add
    synchronisation (10x slower on a busy 2-core machine).
    """
    out = np.zeros(keep.shape)
    with _single_threaded_blas():
        for r in range(keep.shape[0]):
            _solve_row(gram, cross, keep, lam, prior, out, r)
    return out


def _solve_row(gram, cross, keep, lam, prior, out, r) -> None:
    cols = np.flatnonzero(keep[r])
    if cols.size == 0:
        return
    system = gram[np.ix_(cols, cols)]
    system[np.diag_indices(cols.size)] += lam
    rhs = cross[cols, r] + lam * prior[r, cols]
    factor = scipy.linalg.cho_factor(system, check_finite=False)
    out[r, cols] = scipy.linalg.cho_solve(factor, rhs, check_finite=False)


def _single_threaded_blas() -> contextlib.AbstractContextManager:
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only a speed-up
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def wanda_fit(
    w0: np.ndarray, sums: Sums, *, sparsity: float, nm: tuple[int, int] | None, per_row: bool
) -> np.ndarray:
    """Wanda's keep-mask of `w0` ([out, in]) from the input norms in `sums`."""
    return wanda_mask(w0, sums.norms(), sparsity=sparsity, nm=nm, per_row=per_row)
