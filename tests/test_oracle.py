"""The key oracle (DESIGN §7): removing channels equals masking them in the original.

Three independently built models must agree on real inputs: the pruned model
(channels sliced away), the --mask-only model (consumer weights zeroed) and the
original with a Mul-by-mask in front of every consumer (tests/helpers.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxprune import prune
from tests.helpers import assert_outputs_close, masked_original, run

SAMPLES = ["vgg_digits.onnx", "resnet_digits.onnx", "mlp_digits.onnx"]


@pytest.mark.parametrize("model_name", SAMPLES)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_pruned_equals_masked(models_dir, calib_path, eval_data, model_name, ratio):
    path = models_dir / model_name
    pruned = prune(path, filters=ratio, calib=str(calib_path), reconstruct=False, write=False)
    masked = prune(path, filters=ratio, calib=str(calib_path), mask_only=True, write=False)
    assert pruned.plan.groups, "expected something to prune"
    assert [g.keep for g in pruned.plan.groups] == [g.keep for g in masked.plan.groups]

    oracle = masked_original(pruned.reference, pruned.groups, pruned.plan)
    feeds = {"input": eval_data["input"][:128]}
    out_pruned = run(pruned.model, feeds)
    out_masked = run(masked.model, feeds)
    out_oracle = run(oracle, feeds)
    assert_outputs_close(out_oracle, out_pruned)
    assert_outputs_close(out_oracle, out_masked)
    # The oracle must be able to fail: the unmasked original differs.
    original = run(onnx.load(str(path)), feeds)
    assert not np.allclose(original[0], out_oracle[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("model_name", SAMPLES)
def test_pruned_shapes_shrink_as_planned(models_dir, model_name):
    result = prune(models_dir / model_name, filters=0.5, write=False)
    before = {i.name: list(i.dims) for i in result.reference.graph.initializer}
    after = {i.name: list(i.dims) for i in result.model.graph.initializer}
    checked = 0
    for group in result.groups:
        gplan = result.plan.for_group(group.id)
        if gplan is None:
            continue
        for param in group.params:
            per_channel = param.positions.shape[1]
            if param.positions.size == before[param.initializer][param.axis]:
                assert after[param.initializer][param.axis] == len(gplan.keep) * per_channel
                checked += 1
    assert checked > 0


def test_resnet_half_cuts_more_than_60_percent(models_dir):
    # Issue 2's bar: `onnxprune models/resnet_digits.onnx --filters 0.5` (uniform ratios).
    result = prune(models_dir / "resnet_digits.onnx", filters=0.5, write=False)
    report = result.report
    assert report["params"]["after"] < 0.4 * report["params"]["before"]
    assert report["flops"]["after"] < 0.4 * report["flops"]["before"]
    onnx.checker.check_model(result.model, full_check=True)


def test_residual_adds_couple_their_branches(models_dir):
    result = prune(models_dir / "resnet_digits.onnx", filters=0.5, write=False)
    by_root = {tuple(g.roots): g for g in result.groups}
    # The stem and layer1.conv2 both feed the first residual Add: one group.
    coupled = [g for g in result.groups if len(g.roots) > 1]
    assert coupled, f"no residual group found among {list(by_root)}"
    for g in coupled:
        ops = {p.node.split("/")[-1] for p in g.params if p.role == "out"}
        assert "Conv" in ops
