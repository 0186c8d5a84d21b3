"""Gradient-based importance scores, pure numpy on the outputs of `onnxprune.autodiff`.

Higher always means more important. The gradients come from the batch-mean
cross-entropy (`GradientSession.run`), so every function here states how it treats
the 1/N of the mean. Scores are float64 whatever the model's precision.

- SNIP (Lee et al. 2019): connection sensitivity |g·w| of each weight.
- Fisher: squared per-sample gradients, summed over the calibration set (the
  diagonal of the empirical Fisher; with w²/2 it is the OBD saliency).
- Taylor (Molchanov et al. 2017): |mean of (dL/dz · z)| per channel of an
  activation, ℓ2-normalised per layer so layers compare.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.errors import UsageError


def snip_scores(
    weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """|g·w| per weight, normalised to sum to 1 over every tensor given (the whole model).

    One normalisation for the whole model, not per layer: SNIP keeps the globally
    most sensitive connections, so scores must be comparable across layers. A model
    whose gradients are all zero gets all-zero scores.
    """
    missing = sorted(set(weights) - set(grads))
    if missing:
        raise UsageError(f"no gradient for weight(s) {missing}")
    raw = {}
    for name, w in weights.items():
        g = np.asarray(grads[name])
        if g.shape != np.shape(w):
            raise UsageError(f"gradient of '{name}' has shape {g.shape}, weight {np.shape(w)}")
        raw[name] = np.abs(g.astype(np.float64) * np.asarray(w, dtype=np.float64))
    total = sum(float(s.sum()) for s in raw.values())
    if total == 0.0:
        return raw
    return {name: s / total for name, s in raw.items()}


def fisher_accumulate(
    total: Mapping[str, np.ndarray] | None,
    grads: Mapping[str, np.ndarray],
    batch_size: int = 1,
) -> dict[str, np.ndarray]:
    """`total` plus the squared per-sample gradients of one run (a new dict, float64).

    Exact with per-sample gradients: run `GradientSession` on one sample at a time
    (batch size 1; the batch-mean loss is then the sample's own loss) and call this
    once per sample with batch_size=1. That is the honest empirical Fisher and costs
    one backward run per calibration sample.

    With a batch of B samples the session returns ḡ = (1/B)·Σᵢ gᵢ, and this function
    adds B²·ḡ² in place of Σᵢ gᵢ². That is exact only when the per-sample gradients
    are uncorrelated with zero mean; the cross terms Σ_{i≠j} gᵢgⱼ otherwise bias it
    (upwards where samples agree, downwards where they cancel), so treat batched
    Fisher as an approximation for ranking, not as the Fisher information.
    """
    if batch_size < 1:
        raise UsageError(f"batch_size must be >= 1, got {batch_size}")
    out = {name: np.array(value, dtype=np.float64) for name, value in (total or {}).items()}
    factor = float(batch_size) ** 2
    for name, g in grads.items():
        squared = np.square(np.asarray(g, dtype=np.float64)) * factor
        out[name] = out[name] + squared if name in out else squared
    return out


def fisher_weight_scores(
    fisher_sum: Mapping[str, np.ndarray], weights: Mapping[str, np.ndarray], samples: int
) -> dict[str, np.ndarray]:
    """OBD-style saliency ½·F̂ᵢᵢ·wᵢ² with F̂ = (Σ per-sample g²) / samples."""
    if samples < 1:
        raise UsageError(f"samples must be >= 1, got {samples}")
    return {
        name: 0.5
        * np.asarray(f, dtype=np.float64)
        / samples
        * np.square(np.asarray(weights[name], dtype=np.float64))
        for name, f in fisher_sum.items()
    }


@dataclass(frozen=True)
class ChannelSums:
    """Running Σ(dL/dz · z) per channel and how many (sample, position) terms it holds."""

    total: np.ndarray  # float64 [C]
    count: int


def taylor_accumulate(
    acc: ChannelSums | None,
    activation: np.ndarray,
    grad: np.ndarray,
    axis: int = 1,
    grad_of_mean_loss: bool = True,
) -> ChannelSums:
    """Add one batch (batch on axis 0, channels on `axis`) to the running sums.

    grad_of_mean_loss: the gradient came from the batch-mean loss (what
    `GradientSession` returns), so it carries a factor 1/N; multiplying by N gives each
    sample's gradient of its own loss (samples do not interact in an inference
    graph), which keeps batches of different sizes on the same scale.
    """
    activation, grad = np.asarray(activation), np.asarray(grad)
    if activation.shape != grad.shape:
        raise UsageError(f"activation {activation.shape} and gradient {grad.shape} differ")
    axis = axis % activation.ndim
    product = activation.astype(np.float64) * grad.astype(np.float64)
    if grad_of_mean_loss:
        product *= activation.shape[0]
    others = tuple(a for a in range(activation.ndim) if a != axis)
    total = product.sum(axis=others)
    count = int(product.size // max(product.shape[axis], 1))
    if acc is None:
        return ChannelSums(total, count)
    if acc.total.shape != total.shape:
        raise UsageError(f"channel count changed: {acc.total.shape} vs {total.shape}")
    return ChannelSums(acc.total + total, acc.count + count)


def taylor_scores(acc: ChannelSums) -> np.ndarray:
    """|mean of dL/dz · z| per channel, ℓ2-normalised over the layer's channels."""
    scores = np.abs(acc.total / max(acc.count, 1))
    norm = float(np.linalg.norm(scores))
    return scores / norm if norm > 0 else scores


def taylor_channel_scores(
    activation: np.ndarray, grad: np.ndarray, axis: int = 1, grad_of_mean_loss: bool = True
) -> np.ndarray:
    """Molchanov et al. (2017) Taylor criterion for one batch: |mean over batch and
    positions of (dL/dz · z)| per channel, ℓ2-normalised per layer. A channel whose
    activation is always zero scores 0: removing it cannot change the loss."""
    return taylor_scores(taylor_accumulate(None, activation, grad, axis, grad_of_mean_loss))
