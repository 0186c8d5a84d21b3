"""What a plan removes, resolved onto concrete tensors: shared by surgery and masking.

Several groups may cut the same constant (a Conv weight loses output channels to
one group and input channels to another), so positions are collected per
(constant, axis) before anything is sliced.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from onnxprune.depgraph import Group
from onnxprune.oprules import ShapeFix
from onnxprune.plan import Plan


@dataclass
class Removal:
    # (constant name, axis) -> sorted positions to delete
    params: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    # (constant name, axis) -> role of the slice ("in", "out", "affine")
    roles: dict[tuple[str, int], str] = field(default_factory=dict)
    # (tensor name, axis) -> positions removed along that axis
    tensors: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    shape_fixes: list[ShapeFix] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.params


def resolve(groups: Sequence[Group], plan: Plan) -> Removal:
    by_id = {g.id: g for g in groups}
    params: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
    tensors: dict[tuple[str, int], list[np.ndarray]] = defaultdict(list)
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
        removal.shape_fixes.extend(group.shape_fixes)
    removal.params = {k: np.unique(np.concatenate(v)) for k, v in params.items()}
    removal.tensors = {k: np.unique(np.concatenate(v)) for k, v in tensors.items()}
    return removal
