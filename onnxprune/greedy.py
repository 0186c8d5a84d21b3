"""ThiNet-style greedy channel selection on the consumers' least-squares re-fit error.

Backward elimination: repeatedly remove the channel whose removal least raises the
error of the best re-fit of the layers that read the group. For one layer with input
Gram G, weights W and current kept columns K, let H = G[K,K]⁻¹ and Z = H·G[K,:]·Wᵀ
(the re-fit solution). Removing the block of columns S raises the residual by
tr(Z_Sᵀ · H_SS⁻¹ · Z_S) — the OBS formula for a block — and H, Z are downdated
exactly, so no step re-solves the system. Errors of several consumers are summed
after normalising each by its output energy (RECONSTRUCTION.md, lesson 3).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import scipy.linalg

from onnxprune.sensitivity import Consumer


class _LayerState:
    def __init__(self, consumer: Consumer, gram: np.ndarray) -> None:
        d = gram.shape[0]
        self.energy = float(np.sum(consumer.weight * (consumer.weight @ gram))) or 1.0
        scale = float(np.trace(gram)) / max(d, 1) or 1.0
        self.h = scipy.linalg.inv(gram + 1e-7 * scale * np.eye(d))
        self.z = self.h @ (gram @ consumer.weight.T)  # [d, out]
        self.alive = np.ones(d, dtype=bool)
        self.columns = consumer.columns  # [C, m]

    def cost(self, channel: int) -> float:
        s = self.columns[channel]
        h_ss = self.h[np.ix_(s, s)]
        z_s = self.z[s]
        return float(np.sum(z_s * np.linalg.solve(h_ss, z_s))) / self.energy

    def remove(self, channel: int) -> None:
        s = self.columns[channel]
        h_ss_inv = np.linalg.inv(self.h[np.ix_(s, s)])
        h_ks = self.h[:, s]
        self.z -= h_ks @ (h_ss_inv @ self.z[s])
        self.h -= h_ks @ h_ss_inv @ self.h[s, :]
        self.alive[s] = False
        # Removed columns leave the system: zero their rows/cols so they never return.
        self.h[s, :] = 0.0
        self.h[:, s] = 0.0
        self.z[s] = 0.0


def elimination_scores(
    channels: int, consumers: Sequence[Consumer], grams: Mapping[str, np.ndarray]
) -> np.ndarray:
    """Score per channel: the step at which greedy elimination removes it (survivor: C)."""
    layers = [_LayerState(c, grams[c.node]) for c in consumers if c.node in grams]
    scores = np.full(channels, float(channels))
    if not layers:
        return scores
    remaining = list(range(channels))
    for step in range(channels - 1):  # the last channel is never removed
        costs = [sum(layer.cost(c) for layer in layers) for c in remaining]
        victim = remaining.pop(int(np.argmin(costs)))
        scores[victim] = step
        for layer in layers:
            layer.remove(victim)
    return scores
