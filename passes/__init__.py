"""The pass registry: every pass by name (DESIGN §4). A pass never imports another pass."""

from __future__ import annotations

from onnxprune.passes.allocate import AllocatePass
from onnxprune.passes.blobs import BlobsPass, SparseInitializersPass
from onnxprune.passes.calibrate import CalibratePass
from onnxprune.passes.emit import EmitPass
from onnxprune.passes.gradients import GradientsPass
from onnxprune.passes.greedy import GreedyPass
from onnxprune.passes.groups import GroupsPass
from onnxprune.passes.load import LoadPass
from onnxprune.passes.mask import MaskPass
from onnxprune.passes.normalize import NormalizePass
from onnxprune.passes.plan import PlanPass
from onnxprune.passes.reconstruct import ReconstructPass
from onnxprune.passes.report import ReportPass
from onnxprune.passes.score import ScorePass
from onnxprune.passes.stats import StatsPass
from onnxprune.passes.surgery import SurgeryPass
from onnxprune.passes.verify import VerifyPass
from onnxprune.passes.weights import WeightsPass

PASSES = {
    p.name: p
    for p in (
        LoadPass,
        NormalizePass,
        CalibratePass,
        GroupsPass,
        StatsPass,
        GradientsPass,
        GreedyPass,
        ScorePass,
        AllocatePass,
        PlanPass,
        SurgeryPass,
        MaskPass,
        ReconstructPass,
        VerifyPass,
        ReportPass,
        EmitPass,
        WeightsPass,
        SparseInitializersPass,
        BlobsPass,
    )
}


def scoring_passes(criterion: str) -> list:
    """The passes that score channels under `criterion`: its evidence pass, then score."""
    from onnxprune.criteria import get_criterion

    needs = get_criterion(criterion).needs
    if needs == "stats":
        return [StatsPass(), ScorePass(criterion=criterion)]
    if needs == "saliency":
        return [GradientsPass(criterion=criterion), ScorePass(criterion=criterion)]
    if needs == "greedy":
        return [GreedyPass(), ScorePass(criterion=criterion)]
    return [ScorePass(criterion=criterion)]


__all__ = ["PASSES", "scoring_passes"]
