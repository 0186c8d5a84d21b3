"""Errors a user can act on, each with the exit code the CLI documents.

Everything the tool rejects on purpose raises a subclass of `PruneError`; the CLI
prints its message as one line and exits with its `exit_code`. Anything else is a
bug and exits with code 1 and a traceback under `-v`.
"""

from __future__ import annotations


class PruneError(Exception):
    """Base class: a message fit for one line of output, and an exit code."""

    exit_code = 1


class UsageError(PruneError):
    """A flag value is invalid (ratio out of range, unknown criterion, bad glob)."""

    exit_code = 2


class ModelError(PruneError):
    """The input model is missing, not ONNX, or fails onnx.checker."""

    exit_code = 3


class CalibrationError(PruneError):
    """Calibration data is missing an input, or has the wrong shape, dtype or values."""

    exit_code = 4


class OutputError(PruneError):
    """The output path cannot be written (same as input, unwritable directory)."""

    exit_code = 5


class VerificationError(PruneError):
    """The pruned model failed its own verification; nothing was written."""

    exit_code = 6


class FidelityError(PruneError):
    """--max-drop: even the smallest pruning step loses more than allowed; nothing written."""

    exit_code = 7


class PipelineError(PruneError):
    """The pass list is inconsistent (unknown pass, a requirement nobody provides)."""

    exit_code = 2


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it with the -v traceback)",
    2: "invalid command-line usage or option value",
    3: "input model missing, unreadable or invalid",
    4: "calibration data invalid",
    5: "output cannot be written",
    6: "pruned model failed verification (nothing written)",
    7: "--max-drop: even the smallest pruning step exceeds the allowed drop (nothing written)",
}
