"""Importance criteria: one scoring function per criterion (higher = more important).

Weight criteria read the group's filters ("out" members); activation criteria read
the calibration statistics of the group's channels (onnxprune.stats); the Wanda/OBD
style ones combine the weights that read a channel ("in" members) with its
activation energy. Member scores are normalised by their mean before averaging, so a
residual group with several filters is not dominated by the largest one.
Adding a criterion means adding an entry here; surgery never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.depgraph import Group
from onnxprune.errors import UsageError
from onnxprune.stats import ChannelStats


@dataclass(frozen=True)
class Evidence:
    """What data-driven criteria know about one group's channels."""

    stats: ChannelStats | None = None  # activation statistics (stats pass)
    saliency: Mapping[str, np.ndarray] | None = None  # named scores (gradients, greedy passes)


Scorer = Callable[[Group, Mapping[str, np.ndarray], Evidence], np.ndarray]


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    needs: str | None  # None, "stats", "saliency" or "greedy": the evidence pass to run first
    score: Scorer


def channel_rows(values: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """The slice of `values` owned by each channel, flattened: [C, elements per channel]."""
    picked = np.take(values, positions, axis=axis)  # ... [C, k] ...
    picked = np.moveaxis(picked, axis, 0)
    return picked.reshape(positions.shape[0], -1)


def _member_mean(
    group: Group,
    constants: Mapping[str, np.ndarray],
    role: str,
    reduce: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Average over members of `role` of reduce(channel rows), each normalised by its mean."""
    members = [p for p in group.params if p.role == role]
    # Biases belong to a filter, but the weights decide its ranking.
    members = [p for p in members if constants[p.initializer].ndim > 1] or members
    total = np.zeros(group.channels, dtype=np.float64)
    for param in members:
        rows = channel_rows(constants[param.initializer], param.axis, param.positions)
        scores = reduce(rows.astype(np.float64))
        mean = scores.mean()
        total += scores / mean if mean > 0 else scores
    return total / max(len(members), 1)


def _l1(rows: np.ndarray) -> np.ndarray:
    return np.abs(rows).sum(axis=1)


def _l2(rows: np.ndarray) -> np.ndarray:
    return np.sqrt(np.square(rows).sum(axis=1))


def _sum_sq(rows: np.ndarray) -> np.ndarray:
    return np.square(rows).sum(axis=1)


def _need(evidence: Evidence, name: str) -> ChannelStats:
    if evidence.stats is None:
        raise UsageError(f"criterion '{name}' needs calibration statistics for every group")
    return evidence.stats


def _gradient(evidence: Evidence, name: str) -> np.ndarray:
    if evidence.saliency is None or name not in evidence.saliency:
        raise UsageError(f"criterion '{name}' needs its evidence pass (gradients or greedy)")
    return np.asarray(evidence.saliency[name], dtype=np.float64)


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            "l1",
            "L1 norm of each filter's weights",
            None,
            lambda g, w, e: _member_mean(g, w, "out", _l1),
        ),
        Criterion(
            "l2",
            "L2 norm of each filter's weights",
            None,
            lambda g, w, e: _member_mean(g, w, "out", _l2),
        ),
        Criterion(
            "apoz",
            "1 - average percentage of zeros of the channel (Hu et al. 2016)",
            "stats",
            lambda g, w, e: 1.0 - _need(e, "apoz").apoz,
        ),
        Criterion(
            "mean-act",
            "mean |activation| of the channel on calibration data",
            "stats",
            lambda g, w, e: _need(e, "mean-act").mean_abs,
        ),
        Criterion(
            "energy",
            "‖W_in‖₂ · ‖x‖₂: weights reading the channel times its RMS activation (Wanda-style)",
            "stats",
            lambda g, w, e: _member_mean(g, w, "in", _l2) * np.sqrt(_need(e, "energy").energy),
        ),
        Criterion(
            "obd",
            "½·Σ H_jj·w_j² over the weights reading the channel, H_jj ≈ E[x²] "
            "(Optimal Brain Damage on the consumer's input)",
            "stats",
            lambda g, w, e: 0.5 * _member_mean(g, w, "in", _sum_sq) * _need(e, "obd").energy,
        ),
        Criterion(
            "reconstruction",
            "ThiNet-style greedy elimination: last removed = most important; removal order "
            "minimises the consumers' least-squares re-fit error",
            "greedy",
            lambda g, w, e: _gradient(e, "reconstruction"),
        ),
        Criterion(
            "snip",
            "SNIP connection sensitivity |g·w| summed over each filter (gradients in ONNX)",
            "saliency",
            lambda g, w, e: _gradient(e, "snip"),
        ),
        Criterion(
            "taylor",
            "Molchanov et al. Taylor |mean(dL/dz·z)| of the channel, ℓ2-normalised per layer",
            "saliency",
            lambda g, w, e: _gradient(e, "taylor"),
        ),
        Criterion(
            "fisher",
            "½·E[(dL/dw)²]·w² (Fisher/OBD) summed over each filter",
            "saliency",
            lambda g, w, e: _gradient(e, "fisher"),
        ),
    )
}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        valid = ", ".join(sorted(CRITERIA))
        raise UsageError(f"unknown criterion '{name}'; valid criteria: {valid}") from None


def score_group(
    group: Group,
    constants: Mapping[str, np.ndarray],
    criterion: Criterion,
    evidence: Evidence | None = None,
) -> np.ndarray:
    """Per-channel importance of `group` (length = group.channels)."""
    return np.asarray(criterion.score(group, constants, evidence or Evidence()), np.float64)
