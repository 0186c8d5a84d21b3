"""The Python entry point: `onnxprune.prune(...)`, the same pipeline the CLI runs."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import onnx

from onnxprune.connections import CRITERIA as WEIGHT_CRITERIA
from onnxprune.connections import NEEDS_CALIBRATION, split_layer_ratios
from onnxprune.depgraph import Group
from onnxprune.errors import FidelityError, UsageError
from onnxprune.modelio import check_output_path
from onnxprune.pipeline import Context, Pass, run_pipeline
from onnxprune.plan import Plan
from onnxprune.sparse import DEFAULT_FORMATS

log = logging.getLogger("onnxprune")


@dataclass
class PruneOptions:
    """Every option of a prune run; the CLI flags map one to one onto these fields."""

    filters: float = 0.0
    criterion: str | None = None  # None: "energy" with calibration data, else "l1"
    calib: str | None = None  # .npz, folder of .npy, or script.py[:function]
    labels: str | None = None  # .npy of integer labels aligned with the calibration samples
    calib_samples: int | None = None  # None: 256 with calibration data, 32 random inputs
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
    accelerator: str | None = "generic-45nm"  # estimate section of the report; None: skip
    max_drop: float | None = None  # fidelity guard: largest allowed top-1 (agreement) drop
    # connection pruning (issue 4); see docs/connection-pruning.md
    weights: float = 0.0  # fraction of each layer's weights set to zero
    weight_criterion: str | None = None  # None: "obs" with calibration data, else "magnitude"
    nm: str | None = None  # "N:M": keep N of every M consecutive inputs (instead of weights)
    weights_sequential: bool = True  # wanda/obs statistics from the already-sparse model
    sparse_dir: str | None = None  # None: MODEL.sparse/ beside the output model
    sparse_formats: tuple[str, ...] = DEFAULT_FORMATS
    sparse_values: str = "fp32"  # fp32 | fp16 | int8
    index_bits: str | int | None = None  # relidx: N, or "conv=N,fc=M"; None: conv 4, fc 5
    bsr_block: str | tuple[int, int] | None = None  # None: 4x1, tensors it cannot tile skipped
    eie_pes: int = 64
    sparse_initializers: bool = False  # store pruned weights as ONNX sparse initializers

    def resolved_criterion(self) -> str:
        if self.criterion:
            return self.criterion
        return "energy" if self.calib else "l1"

    def resolved_weight_criterion(self) -> str:
        if self.weight_criterion:
            return self.weight_criterion
        return "obs" if self.calib else "magnitude"

    def layer_ratios(self) -> tuple[tuple[str, ...], tuple[tuple[str, float], ...]]:
        """(--layer-ratio for filter allocation, (glob, sparsity) for connection pruning)."""
        filters_given = bool(self.filters) or self.target_macs is not None
        weights_given = bool(self.weights) or self.nm is not None
        return split_layer_ratios(self.layer_ratio, filters_given, weights_given)

    def prunes_weights(self) -> bool:
        return bool(self.weights) or self.nm is not None or bool(self.layer_ratios()[1])


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
    if options.accelerator:
        from onnxprune.estimate import load_profile

        load_profile(options.accelerator)  # a bad profile fails before any work
    if options.target_macs is not None and options.filters:
        raise UsageError("give either --filters or --target-macs, not both")
    filter_ratios, weight_ratios = options.layer_ratios()
    weight_passes = _weight_passes(options, output, weight_ratios)
    structured = bool(options.filters) or options.target_macs is not None or bool(filter_ratios)
    if options.plan is None:
        from onnxprune.passes import scoring_passes
        from onnxprune.plan import parse_glob_ratio

        passes += scoring_passes(criterion)
        passes.append(
            PASSES["allocate"](
                filters=options.filters,
                target_macs=options.target_macs,
                # weights only: no filter ratio to allocate, so skip the sensitivity curves
                uniform=options.uniform or (not structured and bool(weight_passes)),
                max_ratio=options.max_ratio,
                protect=options.protect if options.protect is not None else bool(options.calib),
                layer_ratio=tuple(parse_glob_ratio(t) for t in filter_ratios),
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
    passes += weight_passes[:1]
    passes += [
        PASSES["verify"](),
        PASSES["report"](command=tuple(command), options=recorded, accelerator=options.accelerator),
    ]
    passes += weight_passes[1:]
    if output is not None:
        passes.append(
            PASSES["emit"](output=str(output), report=str(report_path) if report_path else None)
        )
    return passes


def _weight_passes(
    options: PruneOptions, output: str | Path | None, weight_ratios: tuple
) -> list[Pass]:
    """[weights, (sparse_initializers), blobs] for connection pruning, else []; every
    option is validated here, before anything runs."""
    from onnxprune.passes import PASSES
    from onnxprune.sparse.options import Options
    from onnxprune.sparse.values import value_type
    from onnxprune.sparsity import (
        default_sparse_dir,
        parse_block,
        parse_formats,
        parse_index_bits,
    )
    from onnxprune.unstructured import as_nm

    if not options.prunes_weights():
        if options.sparse_initializers or options.sparse_dir:
            raise UsageError("--sparse-initializers and --sparse-dir need --weights or --nm")
        return []
    weights = options.weights
    if isinstance(weights, bool) or not isinstance(weights, (int, float)) or not 0 <= weights < 1:
        raise UsageError(f"--weights must be in [0, 1) (fraction of weights zeroed), got {weights}")
    criterion = options.resolved_weight_criterion()
    if criterion not in WEIGHT_CRITERIA:
        raise UsageError(
            f"unknown --weight-criterion '{criterion}'; valid: {', '.join(WEIGHT_CRITERIA)}"
        )
    if criterion in NEEDS_CALIBRATION and not options.calib:
        raise UsageError(f"--weight-criterion {criterion} needs calibration data (--calib)")
    nm = as_nm(options.nm)
    if nm is not None and weights:
        raise UsageError("give either --weights or --nm, not both (N:M fixes the sparsity)")
    formats = parse_formats(options.sparse_formats)
    value_type(options.sparse_values)
    index_bits = parse_index_bits(options.index_bits)
    block = parse_block(options.bsr_block)
    Options(n_pe=options.eie_pes)
    directory = None
    if output is not None:
        directory = str(options.sparse_dir or default_sparse_dir(output))
    passes: list[Pass] = [
        PASSES["weights"](
            sparsity=float(weights),
            criterion=criterion,
            nm=f"{nm[0]}:{nm[1]}" if nm else None,
            layer_ratio=weight_ratios,
            exclude=tuple(options.exclude),
            sequential=options.weights_sequential,
        )
    ]
    if options.sparse_initializers:
        passes.append(PASSES["sparse_initializers"]())
    passes.append(
        PASSES["blobs"](
            directory=directory,
            formats=formats,
            values=options.sparse_values,
            index_bits=index_bits,
            block=block,
            n_pe=options.eie_pes,
        )
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
        if options.prunes_weights():
            from onnxprune.sparsity import check_sparse_dir, default_sparse_dir

            blob_dir = options.sparse_dir or default_sparse_dir(output)
            check_sparse_dir(blob_dir, [model_path, *targets])
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
    trial.weights = scale * options.weights
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
