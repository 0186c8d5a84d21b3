"""Reverse-mode gradients of a model's loss, built as a standard ONNX graph.

`build_gradient_model` appends a cross-entropy loss and its backward pass to a copy
of a model (one backward rule per op type in `rules.RULES`), so onnxruntime can
compute dL/dw and dL/dz without a training framework. `GradientSession` builds it
once and runs it per batch; `gradients` is the one-call form.
"""

from __future__ import annotations

from onnxprune.autodiff.api import GradientBatch, GradientSession, gradients, load_for_gradients
from onnxprune.autodiff.builder import BackwardModel, build_gradient_model
from onnxprune.autodiff.errors import GradientUnavailable
from onnxprune.autodiff.rules import RULES

__all__ = [
    "RULES",
    "BackwardModel",
    "GradientBatch",
    "GradientSession",
    "GradientUnavailable",
    "build_gradient_model",
    "gradients",
    "load_for_gradients",
]
