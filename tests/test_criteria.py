"""Every criterion ranks a planted dead channel last (issue 7, issue 6)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune.criteria import CRITERIA
from onnxprune.passes import PASSES, scoring_passes
from onnxprune.pipeline import Context, run_pipeline

DEAD = 5
CONV = "/features/features.3/Conv"


@pytest.fixture(scope="module")
def dead_channel_model(models_dir, tmp_path_factory):
    """VGG with channel DEAD of the second conv silenced: zero filter, BN bias -> ReLU = 0."""
    model = onnx.load(str(models_dir / "vgg_digits.onnx"))
    nodes = {n.name: n for n in model.graph.node}
    conv = nodes[CONV]
    bn = next(n for n in model.graph.node if n.input and n.input[0] == conv.output[0])
    inits = {i.name: i for i in model.graph.initializer}

    def edit(name, fn):
        array = numpy_helper.to_array(inits[name]).copy()
        fn(array)
        inits[name].CopyFrom(numpy_helper.from_array(array, name))

    edit(conv.input[1], lambda w: w.__setitem__(DEAD, 0.0))
    edit(bn.input[2], lambda b: b.__setitem__(DEAD, -1.0))  # beta: output -1 -> ReLU 0
    edit(bn.input[3], lambda m: m.__setitem__(DEAD, 0.0))  # running mean
    path = tmp_path_factory.mktemp("dead") / "dead.onnx"
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("name", sorted(CRITERIA))
def test_dead_channel_scores_lowest(dead_channel_model, calib_path, name):
    ctx = Context()
    passes = [
        PASSES["load"](path=str(dead_channel_model)),
        PASSES["normalize"](),
        PASSES["calibrate"](calib=str(calib_path), samples=64),
        PASSES["groups"](),
    ]
    passes += scoring_passes(name)
    run_pipeline(passes, ctx)
    group = next(g for g in ctx.groups if CONV in g.roots)
    scores = ctx.scores[group.id]
    assert scores.shape == (group.channels,)
    assert int(np.argmin(scores)) == DEAD, scores
    others = np.delete(scores, DEAD)
    assert scores[DEAD] < others.min()  # strictly last, not tied
