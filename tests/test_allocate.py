"""Allocation: greedy ratios meet their target; MAC model equals measured MACs."""

from __future__ import annotations

import pytest

from onnxprune import prune
from onnxprune.allocate import MacModel, allocate
from onnxprune.depgraph import Group
from onnxprune.metrics import node_macs
from onnxprune.sensitivity import Curve


def _groups(*channels: int) -> list[Group]:
    return [Group(id=i, channels=c, roots=[f"n{i}"]) for i, c in enumerate(channels)]


def test_greedy_prefers_the_insensitive_group():
    groups = _groups(10, 10)
    grid = [0.0, 0.2, 0.4, 0.6, 0.8]
    curves = {
        0: Curve(0, grid, [0.0, 0.01, 0.02, 0.03, 0.04]),  # cheap to prune
        1: Curve(1, grid, [0.0, 0.5, 0.8, 0.9, 1.0]),  # expensive
    }
    ratios = allocate(groups, curves, filters=0.4)
    assert ratios == {0: 0.8, 1: 0.0}  # 8 of 20 channels, all from the cheap group


def test_target_met_and_fixed_ratios_kept():
    groups = _groups(16, 16, 16)
    grid = [i / 10 for i in range(10)]
    curves = {i: Curve(i, grid, [r * (i + 1) for r in grid]) for i in (0, 1)}
    ratios = allocate(groups, curves, filters=0.5, fixed={2: 0.25})
    assert ratios[2] == 0.25
    removed = sum(16 - (16 - int(16 * r + 1e-9)) for r in ratios.values())
    assert removed >= 0.5 * 48


def test_unreachable_target_stops_at_max():
    groups = _groups(10)
    curves = {0: Curve(0, [0.0, 0.5], [0.0, 0.1])}
    assert allocate(groups, curves, filters=0.9) == {0: 0.5}


def test_mac_model_matches_measured_macs(models_dir, calib_path):
    result = prune(
        models_dir / "resnet_digits.onnx",
        filters=0.5,
        calib=str(calib_path),
        reconstruct=False,
        write=False,
    )
    model = MacModel.build(result.groups, node_macs(result.reference))
    keep = {g.group: len(g.keep) / g.channels for g in result.plan.groups}
    assert model.macs(keep) == pytest.approx(result.report["flops"]["after"], rel=1e-9)
    assert model.dense == result.report["flops"]["before"]


@pytest.mark.parametrize("uniform", [False, True])
def test_target_macs_is_reached(models_dir, calib_path, uniform):
    result = prune(
        models_dir / "vgg_digits.onnx",
        target_macs=0.4,
        calib=str(calib_path),
        uniform=uniform,
        write=False,
    )
    flops = result.report["flops"]
    assert flops["after"] <= 0.4 * flops["before"] * 1.02
    assert flops["after"] >= 0.25 * flops["before"]  # and not wildly beyond it


def test_first_layer_protected_and_layer_ratio(models_dir, calib_path):
    result = prune(
        models_dir / "vgg_digits.onnx",
        filters=0.5,
        calib=str(calib_path),
        layer_ratio=("*features.7*=0.25",),
        write=False,
    )
    alloc = result.report["allocation"]
    first = next(g for g in result.groups if "/features/features.0/Conv" in g.roots)
    assert alloc["protected"] == [first.id]
    assert result.plan.for_group(first.id).keep == list(range(first.channels))
    fixed = next(g for g in result.groups if "/features/features.7/Conv" in g.roots)
    assert len(result.plan.for_group(fixed.id).keep) == fixed.channels - fixed.channels // 4
    unprotected = prune(
        models_dir / "vgg_digits.onnx",
        filters=0.5,
        calib=str(calib_path),
        protect=False,
        uniform=True,
        write=False,
    )
    assert len(unprotected.plan.for_group(first.id).keep) == first.channels // 2


def test_refit_error_equals_direct_least_squares():
    import numpy as np

    from onnxprune.sensitivity import prefix_errors

    rng = np.random.default_rng(3)
    x = rng.standard_normal((200, 12)) @ rng.standard_normal((12, 12))
    w = rng.standard_normal((5, 12))
    keep = np.array([0, 2, 3, 7, 8, 11])
    y = x @ w.T
    solution, *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
    direct = np.sum((x[:, keep] @ solution - y) ** 2) / np.sum(y**2)
    assert refit_error(x.T @ x, w, keep) == pytest.approx(direct, rel=1e-6)
    assert prefix_errors(x.T @ x, w, np.concatenate([keep, np.setdiff1d(np.arange(12), keep)]))[
        len(keep)
    ] == pytest.approx(direct, rel=1e-6)
    assert refit_error(x.T @ x, w, np.arange(12)) == pytest.approx(0.0, abs=1e-7)
    assert refit_error(x.T @ x, w, np.array([], dtype=int)) == 1.0


def test_prefix_errors_equal_one_refit_per_prefix():
    import numpy as np

    from onnxprune.sensitivity import prefix_errors

    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 10)) @ rng.standard_normal((10, 10))
    gram, w = x.T @ x, rng.standard_normal((4, 10))
    order = rng.permutation(10)
    errors = prefix_errors(gram, w, order)
    for k in range(11):
        assert errors[k] == pytest.approx(refit_error(gram, w, np.sort(order[:k])), abs=1e-7)


def refit_error(gram, weight, keep_cols) -> float:
    """Oracle: relative error of the best re-fit of `weight` on `keep_cols`, one direct solve."""
    import numpy as np

    energy = float(np.sum(weight * (weight @ gram)))
    if keep_cols.size == 0:
        return 1.0
    b = gram[keep_cols] @ weight.T
    solved = np.linalg.lstsq(gram[np.ix_(keep_cols, keep_cols)], b, rcond=None)[0]
    return max(0.0, (energy - float(np.sum(b * solved))) / energy)


def test_prefix_errors_survive_a_singular_gram():
    import numpy as np

    from onnxprune.sensitivity import prefix_errors

    rng = np.random.default_rng(2)
    x = rng.standard_normal((100, 8))
    x[:, 3] = 0.0  # an input that is always zero (a blank pixel, a dead channel)
    x[:, 5] = x[:, 1]  # and a duplicate column
    errors = prefix_errors(x.T @ x, rng.standard_normal((3, 8)), np.arange(8))
    assert np.all(np.isfinite(errors)) and errors[-1] == pytest.approx(0.0, abs=1e-6)
