"""Per-group pruning ratios from measured sensitivity, meeting a global target.

Greedy marginal allocation: starting from nothing removed, repeatedly take the step
(one grid notch of one group) with the smallest increase of re-fit error per unit
of the target — per channel removed for a filter target, per MAC saved for a MAC
target — until the target is met.
MACs are computed exactly from the ratios: a layer keeps (kept outputs / outputs) ×
(kept inputs / inputs) of its MACs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from onnxprune.depgraph import Group
from onnxprune.plan import kept_count
from onnxprune.sensitivity import Curve


@dataclass(frozen=True)
class MacModel:
    """Each MAC layer's MACs and the groups cutting its outputs and inputs."""

    layers: Sequence[tuple[int, int | None, int | None]]  # (macs, out group, in group)

    @classmethod
    def build(cls, groups: Sequence[Group], node_macs: Mapping[str, int]) -> MacModel:
        out_group: dict[str, int] = {}
        in_group: dict[str, int] = {}
        for g in groups:
            if not g.prunable:
                continue
            for root in g.roots:
                out_group[root] = g.id
            for p in g.params:
                if p.role == "in":
                    in_group[p.node] = g.id
        return cls([(m, out_group.get(n), in_group.get(n)) for n, m in node_macs.items()])

    def macs(self, keep_fraction: Mapping[int, float]) -> float:
        total = 0.0
        for macs, out_g, in_g in self.layers:
            factor = keep_fraction.get(out_g, 1.0) if out_g is not None else 1.0
            factor *= keep_fraction.get(in_g, 1.0) if in_g is not None else 1.0
            total += macs * factor
        return total

    @property
    def dense(self) -> float:
        return float(sum(m for m, _, _ in self.layers))


def allocate(
    groups: Sequence[Group],
    curves: Mapping[int, Curve],
    *,
    filters: float | None = None,
    keep_macs: float | None = None,
    fixed: Mapping[int, float] | None = None,
    mac_model: MacModel | None = None,
) -> dict[int, float]:
    """Ratios for every group in `curves` (plus `fixed` as given) meeting the target.

    filters: fraction of the channels of all allocated and fixed groups to remove.
    keep_macs: fraction of the model's MACs to keep (needs mac_model).
    """
    fixed = dict(fixed or {})
    sizes = {g.id: g.channels for g in groups}
    state = {gid: 0 for gid in curves}  # index into each curve's ratios

    def ratios() -> dict[int, float]:
        return {**{gid: curves[gid].ratios[i] for gid, i in state.items()}, **fixed}

    def removed(ratio_map: Mapping[int, float]) -> int:
        return sum(sizes[g] - kept_count(sizes[g], r, 1) for g, r in ratio_map.items())

    def macs(ratio_map: Mapping[int, float]) -> float:
        keep = {g: kept_count(sizes[g], r, 1) / sizes[g] for g, r in ratio_map.items()}
        return mac_model.macs(keep)

    if keep_macs is not None and mac_model is None:
        raise ValueError("a MAC target needs a MacModel")
    total_channels = sum(sizes[g] for g in (*curves, *fixed))

    def reached(ratio_map: Mapping[int, float]) -> bool:
        if keep_macs is not None:
            return macs(ratio_map) <= keep_macs * mac_model.dense + 1e-9
        return removed(ratio_map) >= (filters or 0.0) * total_channels - 1e-9

    current = ratios()
    while not reached(current):
        best, best_cost = None, float("inf")
        for gid, i in state.items():
            curve = curves[gid]
            if i + 1 >= len(curve.ratios):
                continue
            trial = {**current, gid: curve.ratios[i + 1]}
            # Error per unit of the target: MACs saved for a MAC budget, channels
            # removed for a filter budget (the least damage for what was asked).
            if keep_macs is not None:
                gain = macs(current) - macs(trial)
            else:
                gain = removed(trial) - removed(current)
            if gain <= 0:
                continue
            cost = max(curve.errors[i + 1] - curve.errors[i], 0.0) / gain
            if cost < best_cost:
                best, best_cost = gid, cost
        if best is None:
            break  # every group is at its maximum ratio: the target cannot be met
        state[best] += 1
        current = ratios()
    return current
