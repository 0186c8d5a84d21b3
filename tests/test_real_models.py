"""Models nobody here wrote: the onnx wheel's light zoo and PP-OCR det/cls (DESIGN §7).

Each is given seeded random weights (their own are constant fills, or trained ones we
would rather not depend on), pruned with `--filters 0.3`, and must come out valid,
with the same I/O signature, equal to the masked original, and blocked only where
the rules say an op really mixes channels.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune import prune
from onnxprune.depgraph import ANALYSIS_FAILED
from onnxprune.graph import real_inputs
from tests.helpers import assert_outputs_close, masked_original, random_feeds, run
from tools.fetch_test_models import (
    PPOCR_SHAPES,
    fetch_ppocr,
    fold_weights,
    logits_out,
    prepared_light_model,
)

# Why a group may legitimately stay blocked in each model; anything else is a failure.
ALLOWED = {
    "LRN": "normalizes each channel by its neighbours",
    "output": "reaches graph output",
    "grouped": "keep its groups equal",
    "units": "the only unit left is all channels together",
    "softmax": "normalizes over the channel axis",  # a classifier's softmax before the output
}

# model: (blocked kinds allowed, minimum prunable MAC fraction)
LIGHT = {
    "squeezenet": ({"output"}, 0.7),
    "resnet50": ({"output"}, 0.99),
    "densenet121": ({"output"}, 0.99),
    "inception_v1": ({"output", "LRN"}, 0.65),
    "inception_v2": ({"output"}, 0.99),
    "shufflenet": ({"output", "grouped", "units"}, 0.3),
    "bvlc_alexnet": ({"output", "LRN"}, 0.5),
    "zfnet512": ({"output", "LRN"}, 0.6),
    "vgg19": ({"output"}, 0.99),
}
HEAVY = {"bvlc_alexnet", "zfnet512", "vgg19", "resnet50", "densenet121"}


def _signature(model: onnx.ModelProto) -> list:
    rows = []
    for v in (*real_inputs(model), *model.graph.output):
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
        rows.append((v.name, t.elem_type, dims))
    return rows


def _check(
    model: onnx.ModelProto, tmp_path, allowed: set[str], shapes=None, can_fail: bool = True
) -> dict:
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    result = prune(
        path, filters=0.3, write=False, uniform=True, calib_samples=1, input_shapes=shapes or {}
    )
    onnx.checker.check_model(result.model)  # (verify ran the full check already)
    assert _signature(result.model) == _signature(model)
    assert any(g.removed for g in result.plan.groups)
    feeds = random_feeds(model)
    if shapes:
        rng = np.random.default_rng(1)
        feeds = {k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items()}
    oracle = run(masked_original(result.reference, result.groups, result.plan), feeds)
    assert_outputs_close(oracle, run(result.model, feeds))
    if can_fail:  # (one more run of a big model: the heavy ones skip it)
        original = run(result.reference, feeds)[0]
        assert not np.allclose(original, oracle[0], rtol=1e-4, atol=1e-5)
    coverage = result.report["coverage"]
    for entry in coverage["blocked"]:
        assert ANALYSIS_FAILED not in entry["reason"], entry
        kinds = [k for k, text in ALLOWED.items() if text in entry["reason"]]
        assert set(kinds) & allowed, f"unexpected block: {entry}"
    return coverage


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in HEAVY else n for n in LIGHT],
)
def test_light_model_prunes_and_equals_masked_original(tmp_path, name):
    allowed, min_fraction = LIGHT[name]
    coverage = _check(prepared_light_model(name), tmp_path, allowed, can_fail=name not in HEAVY)
    assert coverage["prunable_flops_fraction"] >= min_fraction


@pytest.fixture(scope="module")
def ppocr():
    try:
        return fetch_ppocr()
    except (RuntimeError, OSError) as exc:
        pytest.skip(f"PP-OCR models unavailable (download failed): {exc}")


@pytest.mark.parametrize(("name", "min_fraction"), [("ppocr_det", 0.99), ("ppocr_cls", 0.9)])
def test_ppocr_prunes_with_dynamic_dims(tmp_path, ppocr, name, min_fraction):
    model = logits_out(fold_weights(onnx.load(str(ppocr[name])), seed=0))
    shapes = {"x": PPOCR_SHAPES[name]}
    coverage = _check(model, tmp_path, {"output", "softmax"}, shapes=shapes)
    assert coverage["prunable_flops_fraction"] >= min_fraction
    assert coverage["total_macs"] > 0
