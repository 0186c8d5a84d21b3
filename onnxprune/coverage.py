"""How much of a model's compute the dependency graph can prune, and what blocks the rest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from onnxprune.depgraph import Group


def coverage(groups: Sequence[Group], macs: Mapping[str, int]) -> dict[str, Any]:
    """MACs of layers whose output channels are in prunable groups ÷ MACs of all such layers.

    `macs` maps Conv/ConvTranspose/Gemm/MatMul node names to their MACs.
    """
    total = sum(macs.values())
    prunable_roots = {r for g in groups if g.prunable for r in g.roots}
    covered = sum(m for name, m in macs.items() if name in prunable_roots)
    return {
        "prunable_flops_fraction": covered / total if total else 0.0,
        "prunable_macs": covered,
        "total_macs": total,
        "blocked": [
            {"group": g.id, "roots": g.roots, "node": g.blocked_node, "reason": g.blocked}
            for g in groups
            if not g.prunable
        ],
    }


def group_mac_share(group: Group, macs: Mapping[str, int]) -> float:
    """Share of the model's MACs spent in layers that shrink with this group."""
    total = sum(macs.values())
    mine = sum(macs.get(name, 0) for name in group.nodes())
    return mine / total if total else 0.0
