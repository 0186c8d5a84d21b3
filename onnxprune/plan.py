"""The plan: which channels of which group survive. JSON-serialisable and replayable."""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from onnxprune.depgraph import Group
from onnxprune.errors import UsageError


@dataclass
class GroupPlan:
    group: int
    roots: list[str]
    channels: int
    keep: list[int]

    @property
    def removed(self) -> list[int]:
        kept = set(self.keep)
        return [c for c in range(self.channels) if c not in kept]


@dataclass
class Plan:
    ratio: float
    criterion: str
    round_to: int
    groups: list[GroupPlan] = field(default_factory=list)
    excluded: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping) -> Plan:
        groups = [GroupPlan(**g) for g in data.get("groups", [])]
        return cls(
            ratio=float(data["ratio"]),
            criterion=str(data["criterion"]),
            round_to=int(data.get("round_to", 1)),
            groups=groups,
            excluded=list(data.get("excluded", [])),
        )

    def for_group(self, gid: int) -> GroupPlan | None:
        return next((g for g in self.groups if g.group == gid), None)


def parse_glob_ratio(
    text: str, flag: str = "--layer-ratio", letter: str = "R"
) -> tuple[str, float]:
    """'GLOB=R' -> (GLOB, R) with R in [0, 1); a one-line UsageError otherwise."""
    glob, sep, value = text.rpartition("=")
    try:
        ratio = float(value)
    except ValueError:
        ratio = -1.0
    if not sep or not glob or not 0.0 <= ratio < 1.0:
        raise UsageError(f"{flag} '{text}' is not GLOB={letter} with {letter} in [0, 1)")
    return glob, ratio


def kept_count(channels: int, ratio: float, round_to: int) -> int:
    """Channels kept when removing `ratio` of them, rounded up to a multiple of round_to."""
    keep = channels - math.floor(channels * ratio + 1e-9)
    keep = max(1, keep)
    if round_to > 1:
        keep = min(channels, math.ceil(keep / round_to) * round_to)
    return keep


def excluded_by(group: Group, patterns: Sequence[str]) -> str | None:
    """The first --exclude pattern that matches a node with parameters in the group."""
    for pattern in patterns:
        if any(fnmatch.fnmatchcase(name, pattern) for name in group.nodes()):
            return pattern
    return None


def make_plan(
    groups: Sequence[Group],
    scores: Mapping[int, np.ndarray],
    ratio: float,
    criterion: str,
    round_to: int = 1,
    exclude: Sequence[str] = (),
    ratios: Mapping[int, float] | None = None,
) -> Plan:
    """Every prunable, non-excluded group keeps its highest-scoring channels.

    `ratios` gives each group its own ratio (groups missing from it are kept whole);
    without it every group gets `ratio`.
    """
    plan = Plan(ratio=ratio, criterion=criterion, round_to=round_to)
    for group in groups:
        if not group.prunable:
            continue
        pattern = excluded_by(group, exclude)
        if pattern is not None:
            plan.excluded.append({"group": group.id, "roots": group.roots, "pattern": pattern})
            continue
        group_ratio = ratio if ratios is None else ratios.get(group.id, 0.0)
        keep_n = kept_count(group.channels, group_ratio, round_to)
        order = np.argsort(-scores[group.id], kind="stable")  # ties: lower index first
        keep = sorted(int(i) for i in order[:keep_n])
        plan.groups.append(GroupPlan(group.id, list(group.roots), group.channels, keep))
    return plan


def unmatched_patterns(node_names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """--exclude patterns that match no node name of the model (the CLI warns about them)."""
    names = set(node_names)
    return [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]
