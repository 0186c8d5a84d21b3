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

Scorer = Callable[[Group, Mapping[str, np.ndarray], "ChannelStats | None"], np.ndarray]


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    needs_stats: bool
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


def _need(stats: ChannelStats | None, name: str) -> ChannelStats:
    if stats is None:
        raise UsageError(f"criterion '{name}' needs calibration statistics for every group")
    return stats


CRITERIA: dict[str, Criterion] = {
    c.name: c
    for c in (
        Criterion(
            "l1",
            "L1 norm of each filter's weights",
            False,
            lambda g, w, s: _member_mean(g, w, "out", _l1),
        ),
        Criterion(
            "l2",
            "L2 norm of each filter's weights",
            False,
            lambda g, w, s: _member_mean(g, w, "out", _l2),
        ),
        Criterion(
            "apoz",
            "1 - average percentage of zeros of the channel (Hu et al. 2016)",
            True,
            lambda g, w, s: 1.0 - _need(s, "apoz").apoz,
        ),
        Criterion(
            "mean-act",
            "mean |activation| of the channel on calibration data",
            True,
            lambda g, w, s: _need(s, "mean-act").mean_abs,
        ),
        Criterion(
            "energy",
            "‖W_in‖₂ · ‖x‖₂: weights reading the channel times its RMS activation (Wanda-style)",
            True,
            lambda g, w, s: _member_mean(g, w, "in", _l2) * np.sqrt(_need(s, "energy").energy),
        ),
        Criterion(
            "obd",
            "½·Σ H_jj·w_j² over the weights reading the channel, H_jj ≈ E[x²] "
            "(Optimal Brain Damage on the consumer's input)",
            True,
            lambda g, w, s: 0.5 * _member_mean(g, w, "in", _sum_sq) * _need(s, "obd").energy,
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
    stats: ChannelStats | None = None,
) -> np.ndarray:
    """Per-channel importance of `group` (length = group.channels)."""
    return np.asarray(criterion.score(group, constants, stats), dtype=np.float64)
