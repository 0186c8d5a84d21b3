"""gradients: SNIP, Taylor and Fisher channel scores from a backward graph run in onnxruntime.

The loss is cross-entropy against --labels, or against the model's own top-1 when
there are none (a distillation loss at the unpruned point has zero gradient).
"""

from __future__ import annotations

import numpy as np

from onnxprune.autodiff import GradientSession
from onnxprune.criteria import channel_rows
from onnxprune.depgraph import Group
from onnxprune.pipeline import Context, Param, Pass
from onnxprune.saliency import ChannelSums, taylor_accumulate, taylor_scores
from onnxprune.stats import watched_tensor


class GradientsPass(Pass):
    name = "gradients"
    description = "Per-channel SNIP/Taylor/Fisher scores from gradients over the calibration data."
    params = {"criterion": Param(str, "taylor", "which score", ("snip", "taylor", "fisher"))}
    requires = ("original", "graph", "groups", "calibration")
    provides = ("saliency",)

    def run(self, ctx: Context) -> None:
        criterion = self.options["criterion"]
        groups = [g for g in ctx.groups if g.prunable]
        consumer_inputs = {n.name: n.inputs[0].name for n in ctx.graph.nodes if n.inputs}
        watched = {g.id: watched_tensor(g, consumer_inputs) for g in groups}
        filters = sorted({p.initializer for g in groups for p in g.params if p.role == "out"})
        wanted = [] if criterion == "taylor" else filters
        acts = sorted({t.tensor for t in watched.values() if t}) if criterion == "taylor" else []
        session = GradientSession(ctx.original, wrt=wanted, activations=acts)
        grad_sum = {name: 0.0 for name in wanted}
        fisher = {name: 0.0 for name in wanted}
        taylor: dict[str, ChannelSums | None] = dict.fromkeys(acts)
        samples = 0
        labels = ctx.calibration.label_batches() if ctx.calibration.labels is not None else None
        for feeds in ctx.calibration.batches("gradients"):
            batch = session.run(feeds, next(labels) if labels else None)
            n = batch.batch_size
            samples += n
            for name, g in batch.weights.items():
                g64 = g.astype(np.float64)
                grad_sum[name] = grad_sum[name] + n * g64  # Σ over samples of the mean
                fisher[name] = fisher[name] + n * g64 * g64  # batched Fisher (approximate)
            for name in acts:
                taylor[name] = taylor_accumulate(
                    taylor[name], batch.activations[name], batch.activation_grads[name]
                )
        weights = {name: np.asarray(ctx.graph.tensors()[name].values) for name in wanted}
        per_weight = {}
        if criterion == "snip":
            per_weight = {k: np.abs(grad_sum[k] / samples * weights[k]) for k in wanted}
        elif criterion == "fisher":
            per_weight = {k: 0.5 * fisher[k] / samples * weights[k] ** 2 for k in wanted}
        ctx.saliency = {}
        for group in groups:
            if criterion == "taylor":
                tensor = watched[group.id]
                scores = taylor_scores(taylor[tensor.tensor])[tensor.positions].sum(axis=1)
            else:
                scores = _filter_sums(group, per_weight)
            ctx.saliency[group.id] = {criterion: scores}


def _filter_sums(group: Group, per_weight: dict[str, np.ndarray]) -> np.ndarray:
    """Sum of a per-weight score over each channel's filter weights (all 'out' members)."""
    total = np.zeros(group.channels)
    for param in group.params:
        if param.role == "out" and param.initializer in per_weight:
            rows = channel_rows(per_weight[param.initializer], param.axis, param.positions)
            total += rows.sum(axis=1)
    return total
