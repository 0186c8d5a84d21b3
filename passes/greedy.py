"""greedy: channel scores from ThiNet-style elimination on the consumers' re-fit error."""

from __future__ import annotations

from onnxprune.greedy import elimination_scores
from onnxprune.pipeline import Context, Pass
from onnxprune.sensitivity import consumers_of, gram_matrices


class GreedyPass(Pass):
    name = "greedy"
    description = (
        "Backward elimination of the channel whose removal least raises the consumers' "
        "least-squares re-fit error (the 'reconstruction' criterion)."
    )
    requires = ("original", "groups", "calibration")
    provides = ("saliency",)

    def run(self, ctx: Context) -> None:
        groups = [g for g in ctx.groups if g.prunable]
        consumers = {g.id: consumers_of(g, ctx.original) for g in groups}
        grams = gram_matrices(
            ctx.original,
            [c for cs in consumers.values() for c in cs],
            ctx.calibration.batches("grams"),
        )
        ctx.saliency = {
            g.id: {"reconstruction": elimination_scores(g.channels, consumers[g.id], grams)}
            for g in groups
        }
