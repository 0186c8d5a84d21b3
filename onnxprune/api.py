"""The Python entry point: `onnxprune.prune(...)`, the same pipeline the CLI runs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from onnxprune.depgraph import Group
from onnxprune.errors import FidelityError, UsageError
from onnxprune.modelio import check_output_path
from onnxprune.pipeline import Context, Pass, run_pipeline
from onnxprune.plan import Plan

log = logging.getLogger("onnxprune")


@dataclass
class PruneOptions:
    """Every option of a prune run; the CLI flags map one to one onto these fields."""

    filters: float = 0.0
    criterion: str | None = None  # None: "energy" with calibration data, else "l1"
    calib: str | None = None  # .npz, folder of .npy, or script.py[:function]
    labels: str | None = None  # .npy of integer labels aligned with the calibration samples
    calib_samples: int = 256
    batch_size: int = 32
    exclude: tuple[str, ...] = ()
    round_to: int = 1
    seed: int = 0
    mask_only: bool = False
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    plan: str | None = None  # replay the kept channels of an earlier report/plan
    reconstruct: bool | None = None  # None: on when calibration data is given
    damping: float = 1e-3
    uniform: bool = False  # same ratio everywhere instead of sensitivity allocation
    max_ratio: float = 0.9
    protect: bool | None = None  # keep layers fed by a model input whole; None: with calib
    target_macs: float | None = None  # fraction of MACs to keep, instead of --filters
    layer_ratio: tuple[str, ...] = ()  # "GLOB=R" overrides
    max_drop: float | None = None  # fidelity guard: largest allowed top-1 (agreement) drop

    def resolved_criterion(self) -> str:
        if self.criterion:
            return self.criterion
        return "energy" if self.calib else "l1"


@dataclass
class PruneResult:
    output: Path | None
    model: onnx.ModelProto
    reference: onnx.ModelProto  # the normalized original (weights as initializers)
    report: dict[str, Any]
    groups: list[Group]
    plan: Plan


def default_output(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(path.stem + ".pruned.onnx")


def build_passes(
    model_path: str | Path,
    output: str | Path | None,
    options: PruneOptions,
    report_path: str | Path | None = None,
    command: Sequence[str] = (),
) -> list[Pass]:
    """The pass list of a prune run (names resolve through the registry)."""
    from onnxprune.passes import PASSES  # passes import the core; import them late

    recorded = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()}
    passes = [
        PASSES["load"](path=str(model_path)),
        PASSES["normalize"](),
        PASSES["calibrate"](
            calib=options.calib,
            labels=options.labels,
            samples=options.calib_samples,
            batch_size=options.batch_size,
            seed=options.seed,
        ),
        PASSES["groups"](),
    ]
    criterion = options.resolved_criterion()
    if options.target_macs is not None and options.filters:
        raise UsageError("give either --filters or --target-macs, not both")
    if options.plan is None:
        from onnxprune.criteria import get_criterion
        from onnxprune.passes.allocate import parse_layer_ratio

        if get_criterion(criterion).needs_stats:
            passes.append(PASSES["stats"]())
        passes.append(PASSES["score"](criterion=criterion))
        passes.append(
            PASSES["allocate"](
                filters=options.filters,
                target_macs=options.target_macs,
                uniform=options.uniform,
                max_ratio=options.max_ratio,
                protect=options.protect if options.protect is not None else bool(options.calib),
                layer_ratio=tuple(parse_layer_ratio(t) for t in options.layer_ratio),
                exclude=tuple(options.exclude),
            )
        )
    passes += [
        PASSES["plan"](
            ratio=options.filters,
            criterion=criterion,
            round_to=options.round_to,
            exclude=tuple(options.exclude),
            replay=options.plan,
        ),
        PASSES["mask" if options.mask_only else "surgery"](),
    ]
    reconstruct = options.reconstruct
    if reconstruct is None:
        reconstruct = options.calib is not None and not options.mask_only
    if reconstruct and options.mask_only:
        raise UsageError("--reconstruct changes weights; it cannot be combined with --mask-only")
    if reconstruct:
        passes.append(PASSES["reconstruct"](damping=options.damping))
    passes += [
        PASSES["verify"](),
        PASSES["report"](command=tuple(command), options=recorded),
    ]
    if output is not None:
        passes.append(
            PASSES["emit"](output=str(output), report=str(report_path) if report_path else None)
        )
    return passes


def prune(
    model_path: str | Path,
    output: str | Path | None = None,
    options: PruneOptions | None = None,
    *,
    report_path: str | Path | None = None,
    write: bool = True,
    command: Sequence[str] | None = None,
    **overrides: Any,
) -> PruneResult:
    """Prune `model_path` and (unless write=False) write the result.

    Options come from `options` and/or keyword overrides, e.g.
    `prune("m.onnx", filters=0.5, calib="x.npz")`. Raises `PruneError` subclasses
    on bad input; nothing is written unless every check passes.
    """
    options = options or PruneOptions()
    for key, value in overrides.items():
        if not hasattr(options, key):
            raise TypeError(f"prune() got an unknown option '{key}'")
        setattr(options, key, value)
    if write:
        output = output or default_output(model_path)
        targets = [output] + ([report_path] if report_path else [])
        for target in targets:
            check_output_path(target, [model_path])
    else:
        output = None
    command = list(command if command is not None else sys.argv)
    if options.max_drop is not None:
        options = _within_drop(model_path, options)
    ctx = Context(input_shapes=dict(options.input_shapes))
    passes = build_passes(model_path, output, options, report_path, command)
    run_pipeline(passes, ctx)
    return PruneResult(
        output=ctx.output_path,
        model=ctx.pruned,
        reference=ctx.original,
        report=ctx.report,
        groups=ctx.groups,
        plan=ctx.plan,
    )


def fidelity_drop(report: dict[str, Any]) -> float:
    """Top-1 accuracy drop vs labels if known, else 1 − top-1 agreement with the original."""
    outputs = (report.get("fidelity") or {}).get("outputs") or []
    for out in outputs:
        if out.get("accuracy_before") is not None:
            return out["accuracy_before"] - out["accuracy_after"]
    for out in outputs:
        if out.get("top1_agreement") is not None:
            return 1.0 - out["top1_agreement"]
    raise UsageError("--max-drop needs a model whose output is a [N, classes] score vector")


def _scaled(options: PruneOptions, scale: float) -> PruneOptions:
    """The requested pruning scaled towards nothing (scale 0) from as asked (scale 1)."""
    trial = replace(options, max_drop=None)
    if options.target_macs is not None:
        trial.target_macs = 1.0 - scale * (1.0 - options.target_macs)
    else:
        trial.filters = scale * options.filters
    return trial


def _within_drop(model_path: str | Path, options: PruneOptions, steps: int = 4) -> PruneOptions:
    """Largest pruning (up to the requested one) whose fidelity drop is within max_drop.

    Tries the request first; if it loses too much, bisects the scale of the request
    between the smallest step (1/16 of it) and the request. Drops are measured on the
    calibration inputs (with --labels: accuracy; else agreement with the original).
    """
    limit = float(options.max_drop)
    if not 0.0 <= limit <= 1.0:
        raise UsageError(f"--max-drop must be in [0, 1], got {limit}")

    def drop(scale: float) -> float:
        trial = _scaled(options, scale)
        ctx = Context(input_shapes=dict(trial.input_shapes))
        run_pipeline(build_passes(model_path, None, trial), ctx)
        value = fidelity_drop(ctx.report)
        log.info("max-drop: scale %.3f of the request loses %.4f", scale, value)
        return value

    if drop(1.0) <= limit:
        return replace(options, max_drop=None)
    smallest = 1.0 / 16
    if drop(smallest) > limit:
        raise FidelityError(
            f"even 1/16 of the requested pruning loses more than --max-drop {limit}; "
            "nothing written"
        )
    good, bad = smallest, 1.0
    for _ in range(steps):
        mid = (good + bad) / 2
        if drop(mid) <= limit:
            good = mid
        else:
            bad = mid
    log.warning("max-drop: pruning scaled to %.3f of the request to stay within %.4f", good, limit)
    return _scaled(options, good)
