"""The one error the gradient builder raises on purpose."""

from __future__ import annotations

from onnxprune.errors import UsageError


class GradientUnavailable(UsageError):
    """The model's loss cannot be differentiated (an op without a backward rule, or an
    op configuration the rule does not cover); gradient criteria are unavailable for it.
    """
