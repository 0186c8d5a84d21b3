"""onnxprune: structured pruning of ONNX models without a training framework."""

from __future__ import annotations

__version__ = "0.1.0"

from onnxprune.api import PruneOptions, PruneResult, prune  # noqa: E402

__all__ = ["PruneOptions", "PruneResult", "prune", "__version__"]
