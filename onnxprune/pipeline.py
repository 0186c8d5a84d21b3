"""The pass contract (DESIGN §4): named passes with a parameter schema, run over a context.

A pass declares what context fields it `requires` and which it `provides`; the
pipeline checks the whole list before running anything, so a recipe that asks for
surgery without a plan fails at once with a clear message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.calib import Calibration
from onnxprune.depgraph import Group
from onnxprune.errors import PipelineError, UsageError
from onnxprune.graph import Shape
from onnxprune.plan import Plan

log = logging.getLogger("onnxprune")


@dataclass(frozen=True)
class Param:
    """One entry of a pass's parameter schema."""

    type: type
    default: Any
    description: str
    choices: tuple[Any, ...] | None = None


@dataclass
class Context:
    """Everything passes share; fields start empty and are filled by the passes providing them."""

    model_path: Path | None = None
    source: onnx.ModelProto | None = None  # as loaded, never modified
    original: onnx.ModelProto | None = None  # normalized, the reference for fidelity
    graph: gs.Graph | None = None  # the working graph that surgery edits
    shapes: dict[str, Shape] = field(default_factory=dict)
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    calibration: Calibration | None = None
    groups: list[Group] | None = None
    stats: dict[int, Any] | None = None  # group id -> onnxprune.stats.ChannelStats
    saliency: dict[int, dict[str, np.ndarray]] | None = None  # gradients pass
    scores: dict[int, np.ndarray] | None = None
    ratios: dict[int, float] | None = None  # per-group ratios from the allocate pass
    allocation: dict[str, Any] | None = None
    plan: Plan | None = None
    pruned: onnx.ModelProto | None = None
    fidelity: dict[str, Any] | None = None
    reconstruction: list[dict[str, Any]] | None = None
    sparsity: dict[str, Any] | None = None  # connection pruning record (weights pass)
    output_path: Path | None = None
    report: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


class Pass:
    """Base class: subclasses set name/description/params/requires/provides and run()."""

    name: ClassVar[str]
    description: ClassVar[str]
    params: ClassVar[Mapping[str, Param]] = {}
    requires: ClassVar[tuple[str, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.params)
        if unknown:
            valid = ", ".join(sorted(self.params)) or "none"
            raise UsageError(
                f"pass '{self.name}' has no parameter(s) {sorted(unknown)}; valid: {valid}"
            )
        self.options: dict[str, Any] = {}
        for key, spec in self.params.items():
            value = options.get(key, spec.default)
            if spec.choices is not None and value not in spec.choices:
                raise UsageError(
                    f"pass '{self.name}': {key}={value!r} is not one of {list(spec.choices)}"
                )
            self.options[key] = value

    def run(self, ctx: Context) -> None:  # pragma: no cover - interface
        raise NotImplementedError


def check_order(passes: Sequence[Pass], initially: Sequence[str] = ()) -> None:
    """Fail early if a pass requires something no earlier pass provides."""
    available = set(initially)
    for p in passes:
        missing = [r for r in p.requires if r not in available]
        if missing:
            raise PipelineError(f"pass '{p.name}' needs {missing}, which no earlier pass provides")
        available.update(p.provides)


def run_pipeline(passes: Sequence[Pass], ctx: Context, initially: Sequence[str] = ()) -> Context:
    check_order(passes, initially)
    for p in passes:
        start = time.perf_counter()
        log.debug("pass %s ...", p.name)
        p.run(ctx)
        ctx.timings[p.name] = round(time.perf_counter() - start, 4)
        log.info("%-10s %.3f s", p.name, ctx.timings[p.name])
    return ctx
