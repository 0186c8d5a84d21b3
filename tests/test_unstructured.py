"""Connection pruning: exact counts, N:M patterns, Han/global thresholds, Wanda, OBS oracles."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxprune import unstructured as us
from onnxprune.errors import CalibrationError, UsageError

SETTINGS = settings(max_examples=60, deadline=None)
SPARSITIES = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])


@st.composite
def weights(draw, multiple_of: int = 1):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    rows = draw(st.integers(1, 12))
    cols = multiple_of * draw(st.integers(1, 12))
    w = rng.standard_normal((rows, cols)).astype(np.float32)
    if draw(st.booleans()):
        w = np.round(w, 1)  # many ties
    return w


def correlated_layer(seed: int, rows=24, cols=64, samples=1000):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((cols, cols)) / math.sqrt(cols)
    x = rng.standard_normal((samples, cols)) @ (np.eye(cols) + 2.0 * mixing)
    x *= rng.uniform(0.2, 3.0, size=cols)  # uneven feature scales
    return rng.standard_normal((rows, cols)), x, x.T @ x


# validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("good", [0, 0.0, 0.5, 0.999, np.float32(0.25)])
def test_check_sparsity_accepts_fractions(good):
    assert us.check_sparsity(good) == float(good)


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf"), "0.5", True, None])
def test_check_sparsity_rejects_everything_else(bad):
    with pytest.raises(UsageError, match="sparsity"):
        us.check_sparsity(bad)


@pytest.mark.parametrize("text, nm", [("2:4", (2, 4)), (" 4 : 8 ", (4, 8)), ("1:2", (1, 2))])
def test_parse_nm(text, nm):
    assert us.parse_nm(text) == nm
    assert us.as_nm(nm) == nm


@pytest.mark.parametrize("text", ["4:4", "5:4", "0:4", "a:b", "2", "2:4:8", "-1:4", "", "2.5:4"])
def test_parse_nm_rejects_malformed_patterns(text):
    with pytest.raises(UsageError, match="N:M"):
        us.parse_nm(text)


def test_sparsity_and_nm_are_exclusive_and_groups_must_divide():
    w = np.ones((2, 8))
    with pytest.raises(UsageError, match="not both"):
        us.magnitude_mask(w, 0.5, nm="2:4")
    with pytest.raises(UsageError, match="multiple of M"):
        us.magnitude_mask(np.ones((2, 6)), nm="2:4")
    with pytest.raises(UsageError, match="multiple of M"):
        us.wanda_mask(np.ones((2, 6)), np.ones(6), nm="2:4")
    with pytest.raises(UsageError, match="multiple of M"):
        us.obs_prune(np.ones((2, 6)), np.eye(6), nm="2:4")
    with pytest.raises(UsageError, match="NaN"):
        us.magnitude_mask(np.array([[np.nan, 1.0]]), 0.5)


# magnitude -----------------------------------------------------------------------------


@SETTINGS
@given(weights(), SPARSITIES)
def test_magnitude_prunes_exactly_the_smallest(w, s):
    keep = us.magnitude_mask(w, s)
    assert np.count_nonzero(~keep) == math.floor(w.size * s + 1e-9)
    if keep.any() and (~keep).any():
        assert np.abs(w[keep]).min() >= np.abs(w[~keep]).max()


@SETTINGS
@given(st.data(), st.sampled_from([(1, 2), (2, 4), (4, 8), (1, 4), (3, 4)]))
def test_nm_keeps_the_n_largest_of_every_group(data, nm):
    n, m = nm
    w = data.draw(weights(multiple_of=m))
    x_norms = np.linspace(0.5, 2.0, w.shape[1])
    for keep, score in [
        (us.magnitude_mask(w, nm=nm), np.abs(w)),
        (us.wanda_mask(w, x_norms, nm=f"{n}:{m}"), np.abs(w) * x_norms),
    ]:
        groups = keep.reshape(w.shape[0], -1, m)
        assert (groups.sum(axis=2) == n).all()
        assert us.satisfies_nm(keep, n, m)
        scores = score.reshape(groups.shape)
        kept_min = np.where(groups, scores, np.inf).min(axis=2)
        pruned_max = np.where(groups, -np.inf, scores).max(axis=2)
        assert (kept_min >= pruned_max).all()


def test_satisfies_nm_detects_violations():
    keep = np.array([[1, 1, 0, 0, 1, 0, 1, 0]], bool)
    assert us.satisfies_nm(keep, 2, 4)
    keep[0, 2] = True
    assert not us.satisfies_nm(keep, 2, 4)
    assert not us.satisfies_nm(np.ones((1, 6), bool), 2, 4)


@SETTINGS
@given(weights(), st.floats(0.0, 3.0))
def test_han_threshold_reports_the_sparsity_it_gives(w, quality):
    result = us.han_mask(w, quality)
    threshold = quality * np.std(w.astype(np.float64))
    assert result.threshold == pytest.approx(threshold)
    independent = np.count_nonzero(np.abs(w) <= result.threshold) / w.size
    assert result.sparsity == pytest.approx(independent)
    assert result.sparsity == pytest.approx(1 - result.keep.mean())


@SETTINGS
@given(st.integers(0, 2**32 - 1), SPARSITIES)
def test_han_quality_for_a_target_sparsity(seed, s):
    w = np.random.default_rng(seed).standard_normal((13, 37)).astype(np.float32)
    quality = us.han_quality_for_sparsity(w, s)
    result = us.han_mask(w, quality)
    assert np.count_nonzero(~result.keep) == math.floor(w.size * s + 1e-9)


def test_global_threshold_spans_layers():
    rng = np.random.default_rng(0)
    layers = {
        "conv1": rng.standard_normal((8, 3, 3, 3)) * 1.0,
        "fc1": rng.standard_normal((100, 50)) * 0.1,  # small weights: pruned much harder
        "fc2": rng.standard_normal((10, 100)) * 0.5,
    }
    masks = us.global_magnitude_masks(layers, 0.8)
    total = sum(a.size for a in layers.values())
    assert sum(np.count_nonzero(~m) for m in masks.values()) == math.floor(0.8 * total)
    kept = np.concatenate([np.abs(layers[k][m]) for k, m in masks.items()])
    pruned = np.concatenate([np.abs(layers[k][~m]) for k, m in masks.items()])
    assert kept.min() >= pruned.max()
    sparsity = {k: 1 - m.mean() for k, m in masks.items()}
    assert sparsity["fc1"] > sparsity["fc2"] > sparsity["conv1"]
    assert all(masks[k].shape == layers[k].shape for k in layers)


# wanda ---------------------------------------------------------------------------------


@SETTINGS
@given(weights(), SPARSITIES)
def test_wanda_prunes_each_row_to_the_target(w, s):
    rng = np.random.default_rng(0)
    norms = rng.uniform(0.0, 3.0, w.shape[1])
    keep = us.wanda_mask(w, norms, s)
    per_row = math.floor(w.shape[1] * s + 1e-9)
    assert (np.count_nonzero(~keep, axis=1) == per_row).all()
    score = np.abs(w.astype(np.float64)) * norms
    for r in range(w.shape[0]):
        if keep[r].any() and (~keep[r]).any():
            assert score[r, keep[r]].min() >= score[r, ~keep[r]].max()
    layer = us.wanda_mask(w, norms, s, per_row=False)
    assert np.count_nonzero(~layer) == math.floor(w.size * s + 1e-9)


def test_wanda_uses_activation_norms_not_just_magnitude():
    w = np.array([[1.0, 2.0, 3.0, 4.0]])
    keep = us.wanda_mask(w, np.array([10.0, 1.0, 1.0, 0.1]), 0.5)
    assert keep.tolist() == [[True, False, True, False]]
    conv = np.ones((2, 2 * 4))  # [O, I*kh*kw] with I = 2, 2x2 kernels
    np.testing.assert_array_equal(
        us.wanda_scores(conv, np.array([1.0, 3.0])), np.repeat([[1.0, 3.0]], 4, axis=1).repeat(2, 0)
    )
    with pytest.raises(UsageError, match="one input norm per column"):
        us.wanda_mask(w, np.ones(3), 0.5)
    with pytest.raises(UsageError, match="non-negative"):
        us.wanda_mask(w, -np.ones(4), 0.5)


# OBS (SparseGPT) -----------------------------------------------------------------------


def masked_least_squares(w0: np.ndarray, h: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """argmin over W with W[~keep] = 0 of tr((W - W0) H (W - W0)ᵀ), row by row.

    Setting the gradient over the kept entries K of a row to zero:
    H_KK (w_K - w0_K) - H_KP w0_P = 0  =>  w_K = w0_K + H_KK⁻¹ H_KP w0_P.
    With H = XᵀX this is the least-squares fit of X_K w_K to X w0.
    """
    out = np.zeros_like(w0)
    for r in range(w0.shape[0]):
        k, p = keep[r], ~keep[r]
        out[r, k] = w0[r, k] + np.linalg.solve(h[np.ix_(k, k)], h[np.ix_(k, p)] @ w0[r, p])
    return out


@pytest.mark.parametrize("blocksize", [1, 5, 16, 128])
@pytest.mark.parametrize("percdamp", [0.0, 0.05])
def test_obs_with_pruned_before_kept_is_the_least_squares_optimum(blocksize, percdamp):
    w, x, h = correlated_layer(seed=1, rows=6, cols=40)
    rng = np.random.default_rng(2)
    keep = np.ones_like(w, dtype=bool)
    for r in range(w.shape[0]):  # in every row the pruned inputs come first
        keep[r, : rng.integers(1, w.shape[1])] = False
    result = us.obs_prune(w, h, keep=keep, blocksize=blocksize, percdamp=percdamp)
    damped = h + result.damping * np.eye(h.shape[0])
    expected = masked_least_squares(w, damped, keep)
    np.testing.assert_allclose(result.weights, expected, rtol=1e-7, atol=1e-9)
    assert (result.weights[~keep] == 0).all()
    assert result.damping == pytest.approx(percdamp * np.mean(np.diag(h)))
    if percdamp == 0:  # the plain least-squares solution of X_K w_K ≈ X w0
        for r in range(w.shape[0]):
            solution, *_ = np.linalg.lstsq(x[:, keep[r]], x @ w[r], rcond=None)
            np.testing.assert_allclose(result.weights[r, keep[r]], solution, rtol=1e-7, atol=1e-9)


def test_obs_with_a_fixed_mask_does_not_depend_on_the_block_size():
    w, _, h = correlated_layer(seed=3, rows=5, cols=50)
    keep = np.random.default_rng(4).random(w.shape) > 0.6
    results = [us.obs_prune(w, h, keep=keep, blocksize=b).weights for b in (1, 7, 50, 128)]
    for other in results[1:]:
        np.testing.assert_allclose(other, results[0], rtol=1e-9, atol=1e-10)
    zeroed = us.layer_error(w, w * keep, h)
    assert us.layer_error(w, results[0], h) < zeroed


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sparsity", [0.5, 0.75])
def test_obs_beats_magnitude_on_correlated_data(seed, sparsity):
    w, _, h = correlated_layer(seed)
    result = us.obs_prune(w, h, sparsity, blocksize=16)
    magnitude = us.magnitude_mask(w, sparsity)
    obs_error = us.layer_error(w, result.weights, h)
    assert obs_error <= us.layer_error(w, w * magnitude, h)
    assert result.sparsity == pytest.approx(sparsity, abs=0.01)
    assert (result.weights[~result.keep] == 0).all()


def test_obs_prunes_exactly_per_block_and_keeps_dtype():
    w, _, h = correlated_layer(seed=5, rows=10, cols=64)
    result = us.obs_prune(w.astype(np.float32), h, 0.5, blocksize=16)
    assert result.weights.dtype == np.float32
    per_block = (~result.keep).reshape(10, 4, 16).sum(axis=(0, 2))
    assert (per_block == 80).all()
    untouched = us.obs_prune(w, h, 0.0)
    np.testing.assert_allclose(untouched.weights, w)
    assert untouched.keep.all()


@pytest.mark.parametrize("nm", ["2:4", "4:8", "1:4"])
def test_obs_nm(nm):
    n, m = us.parse_nm(nm)
    w, _, h = correlated_layer(seed=6)
    result = us.obs_prune(w, h, nm=nm, blocksize=30)  # rounded down to a multiple of M
    groups = result.keep.reshape(w.shape[0], -1, m)
    assert (groups.sum(axis=2) == n).all()
    assert us.satisfies_nm(result.weights != 0, n, m)
    magnitude = us.magnitude_mask(w, nm=nm)
    assert us.layer_error(w, result.weights, h) <= us.layer_error(w, w * magnitude, h)


def test_obs_handles_dead_inputs_and_rejects_bad_hessians():
    w, x, _ = correlated_layer(seed=7, rows=4, cols=12)
    x[:, 3] = 0.0  # an input never seen in calibration
    result = us.obs_prune(w, x.T @ x, 0.5)
    assert np.isfinite(result.weights).all()
    with pytest.raises(UsageError, match="Hessian"):
        us.obs_prune(w, np.eye(5), 0.5)
    singular = np.ones((12, 12))  # rank 1, no damping
    with pytest.raises(CalibrationError, match="positive definite"):
        us.obs_prune(w, singular, 0.5, percdamp=0.0)
    with pytest.raises(UsageError, match="percdamp"):
        us.obs_prune(w, x.T @ x, 0.5, percdamp=-1.0)
    with pytest.raises(UsageError, match="keep-mask"):
        us.obs_prune(w, x.T @ x, 0.5, keep=np.ones_like(w, dtype=bool))


def test_layer_error_is_the_output_error():
    w, x, h = correlated_layer(seed=8, rows=3, cols=10, samples=50)
    w2 = w * (np.abs(w) > 0.5)
    assert us.layer_error(w, w2, h) == pytest.approx(np.sum((x @ (w2 - w).T) ** 2))


def test_obs_saliency_with_a_diagonal_hessian_is_w2_h():
    """Uncorrelated inputs: U = diag(H)^-1/2, so w²/U_jj² = w²·H_jj, the exact error cost."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((6, 32))
    h_diag = rng.uniform(0.01, 100.0, 32)
    result = us.obs_prune(w, np.diag(h_diag), 0.5, percdamp=0.0, blocksize=32)
    expected = ~us.prune_lowest(w**2 * h_diag, w.size // 2).reshape(w.shape)
    np.testing.assert_array_equal(result.keep, expected)
    np.testing.assert_allclose(result.weights, w * expected)  # nothing to compensate with
    assert not np.array_equal(result.keep, us.magnitude_mask(w, 0.5))
