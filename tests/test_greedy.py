"""Greedy elimination: the exact downdates equal re-solving the re-fit at every step."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.greedy import elimination_scores
from onnxprune.sensitivity import Consumer


def _refit_error(gram, weight, keep):
    energy = float(np.sum(weight * (weight @ gram)))
    b = gram[keep] @ weight.T
    solved = np.linalg.lstsq(gram[np.ix_(keep, keep)], b, rcond=None)[0]
    return (energy - float(np.sum(b * solved))) / energy


@pytest.mark.parametrize("per_channel", [1, 3])
def test_each_step_removes_the_cheapest_channel_by_direct_refit(per_channel):
    rng = np.random.default_rng(per_channel)
    channels, extra = 6, 2  # two columns that belong to no channel (always kept)
    d = channels * per_channel + extra
    x = rng.standard_normal((400, d)) @ rng.standard_normal((d, d))
    gram, weight = x.T @ x, rng.standard_normal((4, d))
    columns = np.arange(channels * per_channel).reshape(channels, per_channel) + extra
    consumer = Consumer("n", "x", weight, None, columns)
    scores = elimination_scores(channels, [consumer], {"n": gram})
    order = np.argsort(scores)[:-1]  # removal order; the survivor is never removed
    removed: list[int] = []
    for victim in order:
        left = [c for c in range(channels) if c not in removed]
        costs = {}
        for c in left:
            keep = np.setdiff1d(np.arange(d), columns[[*removed, c]].reshape(-1))
            costs[c] = _refit_error(gram, weight, keep)
        assert costs[victim] == pytest.approx(min(costs.values()), rel=1e-6, abs=1e-9)
        removed.append(int(victim))


def test_duplicate_channel_goes_first():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 5))
    x = np.concatenate([x, x[:, [2]]], axis=1)  # channel 5 duplicates channel 2
    gram, weight = x.T @ x, rng.standard_normal((3, 6))
    consumer = Consumer("n", "x", weight, None, np.arange(6)[:, None])
    scores = elimination_scores(6, [consumer], {"n": gram})
    assert int(np.argmin(scores)) in (2, 5)  # removing either twin loses nothing
