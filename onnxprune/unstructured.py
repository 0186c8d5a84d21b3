"""Connection pruning math on numpy weights: which single weights to drop, and OBS updates.

Every function returns a boolean *keep*-mask (True = keep). Functions that care about
orientation take the 2-D [out, in] view of a weight (rows = output channels/features,
columns = inputs; see `onnxprune.sparse.to_matrix`), so N:M groups run along a row
(M consecutive inputs) and Wanda compares weights within a row. The callers own the
calibration statistics: Wanda takes per-input-feature norms ‖X_j‖₂, OBS takes H = XᵀX,
both over the columns of this view (for Conv: im2col patches in (I, kh, kw) order).

Counts are exact and deterministic: pruning a fraction s of n weights removes
floor(s·n) of them (ties go to the lower index), except Han's threshold rule, which
prunes whatever falls at or below its threshold and reports what that was.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.linalg

from onnxprune.errors import CalibrationError, UsageError

NM = tuple[int, int]
_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


# validation ----------------------------------------------------------------------------


def check_sparsity(sparsity: object) -> float:
    """The fraction of weights to prune, in [0, 1)."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.number)):
        raise UsageError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    value = float(sparsity)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise UsageError(f"sparsity must be in [0, 1) (fraction of weights pruned), got {value}")
    return value


def parse_nm(text: str) -> NM:
    """'N:M' -> (N, M): keep N of every M consecutive weights along the input dimension."""
    match = _NM_RE.match(str(text))
    if not match:
        raise UsageError(f"N:M pattern must look like '2:4' (keep N of every M), got {text!r}")
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise UsageError(f"N:M pattern needs 0 < N < M (keep N of every M), got '{n}:{m}'")
    return n, m


def as_nm(nm: str | NM | None) -> NM | None:
    """Normalise an N:M given as '2:4' or (2, 4)."""
    if nm is None or isinstance(nm, str):
        return None if nm is None else parse_nm(nm)
    try:
        n, m = (int(v) for v in nm)
    except (TypeError, ValueError):
        raise UsageError(f"N:M pattern must be 'N:M' or (N, M), got {nm!r}") from None
    return parse_nm(f"{n}:{m}")


def n_pruned(n: int, sparsity: float) -> int:
    """How many of n weights a sparsity prunes: floor(s·n), robust to float noise."""
    return min(n, math.floor(n * check_sparsity(sparsity) + 1e-9))


def _mode(sparsity: float, nm: str | NM | None) -> tuple[float, NM | None]:
    sparsity = check_sparsity(sparsity)
    pattern = as_nm(nm)
    if pattern is not None and sparsity > 0:
        raise UsageError("give either a sparsity or an N:M pattern, not both (N:M fixes it)")
    return sparsity, pattern


def _matrix(w: np.ndarray, what: str = "weights") -> np.ndarray:
    w = np.asarray(w)
    if w.ndim != 2:
        raise UsageError(f"{what} must be the 2-D [out, in] view, got shape {list(w.shape)}")
    _finite(w, what)
    return w


def _finite(a: np.ndarray, what: str) -> None:
    if not np.isfinite(a).all():
        raise UsageError(f"{what} contain NaN or inf")


def _check_groups(cols: int, m: int) -> None:
    if cols % m:
        raise UsageError(
            f"N:M needs the input dimension to be a multiple of M: {cols} inputs, M = {m}"
        )


# selection primitives ------------------------------------------------------------------


def prune_lowest(scores: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of the k lowest scores of a flat array (ties: lower index first), O(n)."""
    scores = np.asarray(scores).ravel()
    pruned = np.zeros(scores.shape, dtype=bool)
    if k <= 0:
        return pruned
    if k >= scores.size:
        pruned[:] = True
        return pruned
    kth = np.partition(scores, k - 1)[k - 1]
    below = scores < kth
    pruned |= below
    ties = np.flatnonzero(scores == kth)[: k - int(below.sum())]
    pruned[ties] = True
    return pruned


def keep_top_per_row(scores: np.ndarray, k_prune: int) -> np.ndarray:
    """Keep-mask pruning the k lowest scores of every row (ties: lower index first)."""
    order = np.argsort(scores, axis=1, kind="stable")[:, :k_prune]
    keep = np.ones(scores.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=1)
    return keep


def nm_keep(scores: np.ndarray, n: int, m: int) -> np.ndarray:
    """Keep-mask with the n highest scores of every m consecutive columns of each row."""
    scores = np.asarray(scores)
    rows, cols = scores.shape
    _check_groups(cols, m)
    grouped = scores.reshape(rows, cols // m, m)
    order = np.argsort(grouped, axis=2, kind="stable")[:, :, : m - n]
    keep = np.ones(grouped.shape, dtype=bool)
    np.put_along_axis(keep, order, False, axis=2)
    return keep.reshape(rows, cols)


def satisfies_nm(keep: np.ndarray, n: int, m: int) -> bool:
    """True if every group of m consecutive inputs of every row keeps at most n.

    Pass weights (`w != 0`) to check a pruned tensor, or a keep-mask.
    """
    keep = np.asarray(keep, dtype=bool)
    rows, cols = keep.shape
    if cols % m:
        return False
    return bool((keep.reshape(rows, cols // m, m).sum(axis=2) <= n).all())


def mask_sparsity(keep: np.ndarray) -> float:
    return 1.0 - float(np.count_nonzero(keep)) / keep.size if keep.size else 0.0


# magnitude -----------------------------------------------------------------------------


def magnitude_mask(w: np.ndarray, sparsity: float = 0.0, nm: str | NM | None = None) -> np.ndarray:
    """Keep the largest |w|: exactly floor(s·n) pruned over the tensor, or N:M per row."""
    sparsity, pattern = _mode(sparsity, nm)
    w = np.asarray(w)
    _finite(w, "weights")
    if pattern is not None:
        return nm_keep(np.abs(_matrix(w)), *pattern)
    return ~prune_lowest(np.abs(w), n_pruned(w.size, sparsity)).reshape(w.shape)


@dataclass(frozen=True)
class HanResult:
    """Han et al. 2015: prune |w| <= quality × std(w) of the layer; what that pruned."""

    keep: np.ndarray
    quality: float
    threshold: float
    sparsity: float  # measured fraction pruned


def han_mask(w: np.ndarray, quality: float) -> HanResult:
    """Han's per-layer threshold: keep |w| > quality·std(w) (std over all the layer's weights)."""
    w = np.asarray(w)
    _finite(w, "weights")
    if isinstance(quality, bool) or not isinstance(quality, numbers.Real) or not quality >= 0:
        raise UsageError(f"Han quality parameter must be a number >= 0, got {quality!r}")
    threshold = float(quality) * float(np.std(w, dtype=np.float64))
    keep = np.abs(w.astype(np.float64)) > threshold
    return HanResult(keep, float(quality), threshold, mask_sparsity(keep))


def han_quality_for_sparsity(w: np.ndarray, sparsity: float) -> float:
    """The quality parameter whose Han threshold prunes floor(s·n) weights (exactly, barring
    ties at the boundary). A constant layer has std 0 and no such threshold: returns 0.0."""
    w = np.asarray(w)
    _finite(w, "weights")
    k = n_pruned(w.size, sparsity)
    std = float(np.std(w, dtype=np.float64))
    if k == 0 or std == 0.0:
        return 0.0
    mags = np.sort(np.abs(w.astype(np.float64)).ravel())
    low = mags[k - 1]
    high = mags[k] if k < mags.size else low
    quality = 0.5 * (low + high) / std
    # the midpoint can round onto a neighbour; step until the threshold separates them
    while quality * std < low:
        quality = np.nextafter(quality, np.inf)
    while high > low and quality * std >= high:
        quality = np.nextafter(quality, 0.0)
    return float(quality)


def global_magnitude_masks(
    weights: Mapping[str, np.ndarray], sparsity: float
) -> dict[str, np.ndarray]:
    """One |w| threshold across all layers pruning floor(s·total) weights overall."""
    names = list(weights)
    arrays = [np.asarray(weights[name]) for name in names]
    for name, a in zip(names, arrays, strict=True):
        _finite(a, f"weights of {name}")
    if not arrays:
        return {}
    flat = np.concatenate([np.abs(a.astype(np.float64)).ravel() for a in arrays])
    pruned = prune_lowest(flat, n_pruned(flat.size, sparsity))
    bounds = np.cumsum([0] + [a.size for a in arrays])
    return {
        name: ~pruned[lo:hi].reshape(a.shape)
        for name, a, lo, hi in zip(names, arrays, bounds[:-1], bounds[1:], strict=True)
    }


# wanda ---------------------------------------------------------------------------------


def wanda_scores(w: np.ndarray, x_norms: np.ndarray) -> np.ndarray:
    """|W_ij|·‖X_j‖₂. x_norms has one entry per column, or per input channel (length dividing
    the columns, each repeated over its kernel positions, e.g. I for a Conv [O, I*kh*kw])."""
    w = _matrix(w)
    norms = np.asarray(x_norms, dtype=np.float64).ravel()
    cols = w.shape[1]
    if norms.size == 0 or cols % norms.size:
        raise UsageError(
            f"Wanda needs one input norm per column ({cols}) or per input channel; got {norms.size}"
        )
    _finite(norms, "input norms")
    if (norms < 0).any():
        raise UsageError("Wanda input norms must be non-negative")
    return np.abs(w.astype(np.float64)) * np.repeat(norms, cols // norms.size)


def wanda_mask(
    w: np.ndarray,
    x_norms: np.ndarray,
    sparsity: float = 0.0,
    nm: str | NM | None = None,
    per_row: bool = True,
) -> np.ndarray:
    """Wanda (Sun et al. 2023): prune the lowest |W|·‖X‖ per output row (per_row, as for
    LLMs), over the whole layer (per_row=False, as for CNNs), or N:M within each row."""
    sparsity, pattern = _mode(sparsity, nm)
    scores = wanda_scores(w, x_norms)
    if pattern is not None:
        return nm_keep(scores, *pattern)
    if per_row:
        return keep_top_per_row(scores, n_pruned(scores.shape[1], sparsity))
    return ~prune_lowest(scores, n_pruned(scores.size, sparsity)).reshape(scores.shape)


# OBS (SparseGPT) -----------------------------------------------------------------------


@dataclass(frozen=True)
class ObsResult:
    weights: np.ndarray  # pruned and compensated, dtype of the input
    keep: np.ndarray
    damping: float  # λ added to diag(H)

    @property
    def sparsity(self) -> float:
        return mask_sparsity(self.keep)


def inverse_hessian_factor(hessian: np.ndarray, percdamp: float = 0.01) -> tuple[np.ndarray, float]:
    """(U, λ): upper Cholesky factor of (H + λI)⁻¹, λ = percdamp·mean(diag H).

    Inputs never seen (H_jj = 0) get H_jj = 1, decoupling them (SparseGPT's 'dead' inputs).
    U_jj² is the OBS denominator [H_F⁻¹]_jj of column j once the columns before it are fixed.
    """
    h = np.array(hessian, dtype=np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
        raise UsageError(f"Hessian must be square [in, in], got shape {list(h.shape)}")
    _finite(h, "Hessian entries")
    if isinstance(percdamp, bool) or not isinstance(percdamp, numbers.Real) or not percdamp >= 0:
        raise UsageError(f"percdamp must be a number >= 0, got {percdamp!r}")
    idx = np.arange(h.shape[0])
    dead = idx[np.diag(h) == 0]
    h[dead, dead] = 1.0
    damping = float(percdamp) * float(np.mean(np.diag(h))) if h.size else 0.0
    h[idx, idx] += damping
    try:
        lower = np.linalg.cholesky(h)
        h_inv = scipy.linalg.cho_solve((lower, True), np.eye(h.shape[0]))
        upper = scipy.linalg.cholesky(h_inv, lower=False)
    except np.linalg.LinAlgError:
        raise CalibrationError(
            "the layer Hessian XᵀX is not positive definite even after damping; "
            "add calibration samples or raise percdamp"
        ) from None
    return upper, damping


def obs_prune(
    w: np.ndarray,
    hessian: np.ndarray,
    sparsity: float = 0.0,
    nm: str | NM | None = None,
    keep: np.ndarray | None = None,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> ObsResult:
    """SparseGPT (Frantar & Alistarh 2023): layer-wise OBS pruning of W [out, in].

    Columns are processed left to right in blocks. The mask is chosen from the *current*
    (already compensated) weights by w²/U_jj²: for a sparsity, the floor(s·size) lowest of
    each block when the block starts; for N:M, the M−N lowest of each row's group of M when
    the group is reached (blocksize is rounded down to a multiple of M). Each pruned
    weight's error is spread over the columns right of it via the row of U; later blocks
    are updated lazily.
    Pass `keep` to impose a mask instead of choosing one.

    With a fixed mask whose pruned entries in every row precede its kept ones, the result
    is exactly the masked least-squares optimum min ‖X(W' − W)ᵀ‖ (damped by λ); in
    general kept weights left of a pruned one are already frozen, so it is an approximation.
    """
    sparsity, pattern = _mode(sparsity, nm)
    w_in = _matrix(w)
    rows, cols = w_in.shape
    if hessian is None or np.shape(hessian) != (cols, cols):
        raise UsageError(f"Hessian must be [{cols}, {cols}] for a {rows}x{cols} weight")
    if keep is not None:
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != w_in.shape or pattern is not None or sparsity > 0:
            raise UsageError("a fixed keep-mask must match the weight and excludes sparsity/N:M")
    if pattern is not None:
        _check_groups(cols, pattern[1])
    if not isinstance(blocksize, numbers.Integral) or blocksize < 1:
        raise UsageError(f"blocksize must be a positive integer, got {blocksize!r}")
    if pattern is not None:
        blocksize = max(pattern[1], int(blocksize) - int(blocksize) % pattern[1])
    upper, damping = inverse_hessian_factor(hessian, percdamp)
    weights = w_in.astype(np.float64)
    pruned = np.zeros((rows, cols), dtype=bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        _obs_block(weights, upper, pruned, i1, i2, sparsity, pattern, keep)
    return ObsResult(weights.astype(w_in.dtype), ~pruned, damping)


def _obs_block(weights, upper, pruned, i1, i2, sparsity, pattern, keep) -> None:
    """Prune columns [i1, i2) in place and push their error onto the columns to the right."""
    block = weights[:, i1:i2].copy()
    u_block = upper[i1:i2, i1:i2]
    diag = np.diag(u_block)
    errors = np.zeros_like(block)
    drop = pruned[:, i1:i2]  # a view: selections land in `pruned`
    if keep is not None:
        drop[:] = ~keep[:, i1:i2]
    elif pattern is None and sparsity > 0:
        saliency = block**2 / diag**2
        drop[:] = prune_lowest(saliency, n_pruned(saliency.size, sparsity)).reshape(block.shape)
    for i in range(i2 - i1):
        if pattern is not None and i % pattern[1] == 0:
            m = pattern[1]
            saliency = block[:, i : i + m] ** 2 / diag[i : i + m] ** 2
            drop[:, i : i + m] = ~nm_keep(saliency, *pattern)
        column = block[:, i]
        err = np.where(drop[:, i], column, 0.0) / diag[i]
        if err.any():
            block[:, i + 1 :] -= np.outer(err, u_block[i, i + 1 :])
            errors[:, i] = err
        block[drop[:, i], i] = 0.0
    weights[:, i1:i2] = block
    weights[:, i2:] -= errors @ upper[i1:i2, i2:]


def layer_error(w_old: np.ndarray, w_new: np.ndarray, hessian: np.ndarray) -> float:
    """‖X(W_new − W_old)ᵀ‖²_F = tr(ΔW H ΔWᵀ) for H = XᵀX: the layer's output error."""
    delta = np.asarray(w_new, dtype=np.float64) - np.asarray(w_old, dtype=np.float64)
    return float(np.einsum("ij,jk,ik->", delta, np.asarray(hessian, dtype=np.float64), delta))
