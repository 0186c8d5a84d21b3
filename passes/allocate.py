"""allocate: how much of each group to prune — uniform, or from measured sensitivity."""

from __future__ import annotations

import fnmatch
import logging

import numpy as np

from onnxprune.allocate import MacModel, allocate
from onnxprune.depgraph import Group
from onnxprune.errors import UsageError
from onnxprune.metrics import node_macs
from onnxprune.pipeline import Context, Param, Pass
from onnxprune.plan import excluded_by, kept_count
from onnxprune.sensitivity import consumers_of, gram_matrices, group_curve

log = logging.getLogger("onnxprune")


class AllocatePass(Pass):
    name = "allocate"
    description = "Per-group ratios: uniform, or greedy on measured re-fit sensitivity."
    params = {
        "filters": Param(float, 0.0, "global fraction of eligible channels to remove"),
        "target_macs": Param(float, None, "fraction of MACs to keep (instead of filters)"),
        "uniform": Param(bool, False, "same ratio for every group"),
        "max_ratio": Param(float, 0.9, "largest ratio for any one group"),
        "protect": Param(bool, True, "never prune the groups of layers fed by a model input"),
        "layer_ratio": Param(tuple, (), "(glob, ratio) overrides for matching groups"),
        "exclude": Param(tuple, (), "glob patterns of node names never pruned"),
        "step": Param(float, 0.05, "ratio grid of the sensitivity curves"),
    }
    requires = ("groups", "scores", "original", "calibration", "graph")
    provides = ("ratios",)

    def run(self, ctx: Context) -> None:
        o = self.options
        if o["target_macs"] is not None and not 0.0 < o["target_macs"] <= 1.0:
            raise UsageError(f"--target-macs must be in (0, 1], got {o['target_macs']}")
        if not 0.0 < o["max_ratio"] < 1.0:
            raise UsageError(f"--max-ratio must be in (0, 1), got {o['max_ratio']}")
        eligible = [g for g in ctx.groups if g.prunable and not excluded_by(g, o["exclude"])]
        protected = self._protected(ctx, eligible) if o["protect"] else set()
        fixed = self._fixed(eligible, o["layer_ratio"])
        free = [g for g in eligible if g.id not in protected and g.id not in fixed]
        macs = node_macs(ctx.original, ctx.input_shapes)
        mac_model = MacModel.build(ctx.groups, macs)
        random_data = ctx.calibration.source.startswith("random")
        mode = "uniform" if o["uniform"] or random_data else "sensitivity"
        if mode == "uniform":
            ratios = self._uniform(free, fixed, mac_model)
            curves = {}
        else:
            grid = [float(r) for r in np.arange(0.0, o["max_ratio"] + 1e-9, o["step"])]
            curves = self._curves(ctx, free, grid)
            ratios = allocate(
                ctx.groups,
                curves,
                filters=o["filters"],
                keep_macs=o["target_macs"],
                fixed=fixed,
                mac_model=mac_model,
            )
        ctx.ratios = ratios
        ctx.allocation = {
            "mode": mode,
            "protected": sorted(protected),
            "fixed": {str(k): v for k, v in fixed.items()},
            "ratios": {str(k): round(v, 4) for k, v in sorted(ratios.items())},
            "macs_kept_fraction": round(
                mac_model.macs(
                    {
                        g.id: kept_count(g.channels, ratios.get(g.id, 0.0), 1) / g.channels
                        for g in ctx.groups
                    }
                )
                / max(mac_model.dense, 1),
                6,
            ),
            "curves": {
                str(k): {"ratios": c.ratios, "errors": [round(e, 6) for e in c.errors]}
                for k, c in curves.items()
            },
        }
        if random_data and not o["uniform"]:
            log.info("allocate: random calibration data, so ratios are uniform")

    def _uniform(self, free: list[Group], fixed: dict[int, float], macs: MacModel) -> dict:
        o = self.options
        if o["target_macs"] is None:
            ratio = min(o["filters"], o["max_ratio"])
            return {**{g.id: ratio for g in free}, **fixed}
        lo, hi = 0.0, o["max_ratio"]
        for _ in range(40):  # bisection on one shared ratio
            mid = (lo + hi) / 2
            keep = {g.id: kept_count(g.channels, mid, 1) / g.channels for g in free}
            if macs.macs(keep) > o["target_macs"] * macs.dense:
                lo = mid
            else:
                hi = mid
        return {**{g.id: hi for g in free}, **fixed}

    @staticmethod
    def _protected(ctx: Context, groups: list[Group]) -> set[int]:
        inputs = {t.name for t in ctx.graph.inputs}
        first = {n.name for n in ctx.graph.nodes if n.inputs and n.inputs[0].name in inputs}
        return {g.id for g in groups if first & set(g.roots)}

    @staticmethod
    def _fixed(groups: list[Group], overrides: tuple) -> dict[int, float]:
        fixed: dict[int, float] = {}
        for glob, ratio in overrides:
            # A ratio is about a layer's own filters: match the nodes creating the channels.
            matched = [g for g in groups if any(fnmatch.fnmatchcase(n, glob) for n in g.roots)]
            if not matched:
                log.warning("--layer-ratio '%s' matches no prunable group", glob)
            for g in matched:
                fixed.setdefault(g.id, ratio)
        return fixed

    @staticmethod
    def _curves(ctx: Context, groups: list[Group], grid: list[float]) -> dict:
        consumers = {g.id: consumers_of(g, ctx.original) for g in groups}
        everyone = [c for cs in consumers.values() for c in cs]
        grams = gram_matrices(ctx.original, everyone, ctx.calibration.batches("sensitivity"))
        return {
            g.id: group_curve(g, consumers[g.id], grams, ctx.scores[g.id], grid) for g in groups
        }
