"""Accelerator estimate: does a model's weight set fit on chip, and what does it cost.

`estimate(model, profile)` returns storage per format, MACs (dense, effective, computed),
peak activation memory, the on-chip fit per layer, DRAM traffic and energy per inference
with the constants used; `before_after` is the prune report's section (both models and
the change); `format_estimate`/`format_comparison` print them; `plot_energy` draws the
stacked energy bars (needs matplotlib: `pip install 'onnxprune[plot]'`).
"""

from __future__ import annotations

from onnxprune.estimate.core import ASSUMPTIONS, before_after, estimate
from onnxprune.estimate.plot import plot_energy  # imports matplotlib only when called
from onnxprune.estimate.profiles import BUILTIN, Profile, load_profile, parse_size
from onnxprune.estimate.report import compare, format_comparison, format_estimate

__all__ = [
    "ASSUMPTIONS",
    "BUILTIN",
    "Profile",
    "before_after",
    "compare",
    "estimate",
    "format_comparison",
    "format_estimate",
    "load_profile",
    "parse_size",
    "plot_energy",
]
