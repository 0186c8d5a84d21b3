"""Importance criteria: a table of (criterion × member role) scoring functions.

A criterion scores each channel of a group; higher means more important. Group
scores average the per-member scores after normalising each member by its mean, so
a residual group with several filters is not dominated by the largest one.
Adding a criterion means adding an entry here; surgery never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from onnxprune.depgraph import Group
from onnxprune.errors import UsageError


@dataclass(frozen=True)
class Criterion:
    name: str
    description: str
    roles: frozenset[str]  # which member roles are scored
    score_rows: Callable[[np.ndarray], np.ndarray]  # [C, n] channel slices → [C]


def _l1(rows: np.ndarray) -> np.ndarray:
    return np.abs(rows).sum(axis=1, dtype=np.float64)


def _l2(rows: np.ndarray) -> np.ndarray:
    return np.sqrt(np.square(rows, dtype=np.float64).sum(axis=1))


CRITERIA: dict[str, Criterion] = {
    "l1": Criterion("l1", "L1 norm of each filter's weights", frozenset({"out"}), _l1),
    "l2": Criterion("l2", "L2 norm of each filter's weights", frozenset({"out"}), _l2),
}


def get_criterion(name: str) -> Criterion:
    try:
        return CRITERIA[name]
    except KeyError:
        valid = ", ".join(sorted(CRITERIA))
        raise UsageError(f"unknown criterion '{name}'; valid criteria: {valid}") from None


def channel_rows(values: np.ndarray, axis: int, positions: np.ndarray) -> np.ndarray:
    """The slice of `values` owned by each channel, flattened: [C, elements per channel]."""
    picked = np.take(values, positions, axis=axis)  # ... [C, k] ...
    picked = np.moveaxis(picked, axis, 0)
    return picked.reshape(positions.shape[0], -1)


def score_group(
    group: Group, constants: Mapping[str, np.ndarray], criterion: Criterion
) -> np.ndarray:
    """Per-channel importance of `group` (length = group.channels)."""
    members = [p for p in group.params if p.role in criterion.roles and p.axis is not None]
    # A filter's bias is part of its parameters, but weights decide the ranking.
    members = [p for p in members if constants[p.initializer].ndim > 1] or members
    total = np.zeros(group.channels, dtype=np.float64)
    for param in members:
        rows = channel_rows(constants[param.initializer], param.axis, param.positions)
        scores = criterion.score_rows(rows)
        mean = scores.mean()
        total += scores / mean if mean > 0 else scores
    return total / max(len(members), 1)
