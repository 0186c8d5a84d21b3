"""What a plan removes, resolved onto concrete tensors: shared by surgery and masking.

Several groups may cut the same constant (a Conv weight loses output channels to
one group and input channels to another; a Concat's consumer loses input channels
to every group that feeds the Concat), so positions are collected per
(constant, axis) before anything is sliced. Fixes (reshape literals, Split sizes,
Slice bounds, `group` attributes) are computed later from the union of removed
positions of the tensor they describe, so each is kept once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxprune.depgraph import Group
from onnxprune.oprules import Fix
from onnxprune.plan import Plan


@dataclass
class Removal:
    # (constant name, axis) -> sorted positions to delete
    params: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    # (constant name, axis) -> role of the slice ("in", "out", "affine")
    roles: dict[tuple[str, int], str] = field(default_factory=dict)
    # (tensor name, axis) -> positions removed along that axis
    tensors: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    fixes: list[Fix] = field(default_factory=list)

    def removed_on(self, tensor: str, axis: int) -> np.ndarray:
        """Positions removed from `axis` of `tensor` by all groups (empty if none)."""
        return self.tensors.get((tensor, axis), np.zeros(0, dtype=np.int64))


def resolve(groups: Sequence[Group], plan: Plan) -> Removal:
    by_id = {g.id: g for g in groups}
    params: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    tensors: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    fixes: dict[tuple, Fix] = {}
    removal = Removal()
    for gplan in plan.groups:
        group = by_id[gplan.group]
        removed = np.asarray(gplan.removed, dtype=np.int64)
        if removed.size == 0:
            continue
        for p in group.params:
            params[(p.initializer, p.axis)].append(p.positions[removed].reshape(-1))
            removal.roles[(p.initializer, p.axis)] = p.role
        for t in group.tensors:
            tensors[(t.tensor, t.axis)].append(t.positions[removed].reshape(-1))
        for fix in group.fixes:
            fixes.setdefault(fix.key(), fix)
    removal.params = {k: np.unique(np.concatenate(v)) for k, v in params.items()}
    removal.tensors = {k: np.unique(np.concatenate(v)) for k, v in tensors.items()}
    removal.fixes = list(fixes.values())
    return removal
