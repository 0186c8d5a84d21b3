"""Command line: `onnxprune MODEL.onnx --filters R` (the `prune` command is the default).

Errors the user can act on print one line, `onnxprune: error: ...`, and exit with
the code documented in the README (see `onnxprune.errors.EXIT_CODES`).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from onnxprune import __version__
from onnxprune.api import PruneOptions, default_output, prune
from onnxprune.calib import parse_input_shape
from onnxprune.cli_options import input_shape_option
from onnxprune.criteria import CRITERIA
from onnxprune.errors import EXIT_CODES, PruneError

log = logging.getLogger("onnxprune")


class _DefaultToPrune(click.Group):
    """A group whose first argument, if not a subcommand, means `prune`."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["prune", *args]
        return super().parse_args(ctx, args)


def _fail(exc: Exception, verbose: int) -> None:
    """Print one line and exit with the documented code (tracebacks only for bugs, with -v)."""
    if isinstance(exc, PruneError):
        click.echo(f"onnxprune: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    if verbose:
        raise exc
    click.echo("onnxprune: internal error (a bug); rerun with -v for the traceback", err=True)
    sys.exit(1)


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = (
        logging.ERROR
        if quiet
        else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("onnxprune: %(levelname)s: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


_EXIT_HELP = "\n".join(f"  {code}  {text}" for code, text in EXIT_CODES.items())


@click.group(
    cls=_DefaultToPrune,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog=f"\b\nExit codes:\n{_EXIT_HELP}",
)
@click.version_option(__version__, prog_name="onnxprune")
def main() -> None:
    """Prune ONNX models without a training framework.

    Run `onnxprune MODEL.onnx --filters 0.5` (same as `onnxprune prune ...`).
    """


@main.command("prune", epilog=f"\b\nExit codes:\n{_EXIT_HELP}")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--filters",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of each prunable group's filters (channels) to remove, in [0, 1).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Pruned model path [default: MODEL.pruned.onnx beside the input].",
)
@click.option(
    "--calib",
    type=click.Path(path_type=Path),
    help="Calibration inputs: FILE.npz keyed by input name (first axis = samples), a folder "
    "of .npy, or script.py[:function] yielding batches.",
)
@click.option(
    "--calib-samples",
    type=int,
    default=None,
    help="Calibration samples to use [default: 256 with --calib, 32 random inputs without].",
)
@click.option(
    "--batch-size", type=int, default=32, show_default=True, help="Samples per onnxruntime run."
)
@click.option(
    "--criterion",
    default=None,
    help=f"Filter importance criterion: {', '.join(sorted(CRITERIA))} "
    "[default: energy with --calib, else l1].",
)
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path), help="Write the JSON report here."
)
@click.option(
    "--exclude",
    multiple=True,
    metavar="GLOB",
    help="Never prune groups touching nodes whose name matches GLOB (repeatable).",
)
@click.option(
    "--round-to",
    type=int,
    default=1,
    show_default=True,
    help="Keep a multiple of N channels per group (hardware-friendly widths).",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for random calibration inputs."
)
@click.option(
    "--mask-only",
    is_flag=True,
    help="Keep all shapes; zero every pruned channel at its consumers instead.",
)
@input_shape_option
@click.option(
    "--plan",
    "plan_path",
    type=click.Path(path_type=Path),
    help="Replay the kept channels of an earlier --report (or plan) JSON.",
)
@click.option(
    "--reconstruct/--no-reconstruct",
    default=None,
    help="Re-fit layers that lost inputs by least squares on the calibration data "
    "[default: on with --calib].",
)
@click.option(
    "--damping",
    type=float,
    default=1e-3,
    show_default=True,
    help="Ridge damping of the re-fit, relative to mean diag(XᵀX).",
)
@click.option(
    "--uniform",
    is_flag=True,
    help="Same ratio for every group instead of sensitivity-based allocation.",
)
@click.option(
    "--max-ratio",
    type=float,
    default=0.9,
    show_default=True,
    help="Largest fraction removed from any one group.",
)
@click.option(
    "--protect/--no-protect",
    default=None,
    help="Keep the groups of layers fed by a model input (the first conv) whole "
    "[default: on with --calib].",
)
@click.option(
    "--target-macs",
    type=float,
    default=None,
    help="Fraction of MACs to keep, instead of --filters.",
)
@click.option(
    "--layer-ratio",
    multiple=True,
    metavar="GLOB=R",
    help="Fixed ratio R for groups with a node matching GLOB (repeatable). With --weights: "
    "the sparsity of layers whose node or weight matches; prefix filters: or weights: to "
    "say which when both are given.",
)
@click.option(
    "--labels",
    type=click.Path(path_type=Path),
    help=".npy of integer labels aligned with the calibration samples (accuracy).",
)
@click.option(
    "--max-drop",
    type=float,
    default=None,
    help="Largest allowed top-1 drop (accuracy with --labels, else agreement with "
    "the original); prunes less if needed, exit 7 if impossible.",
)
@click.option(
    "--weights",
    type=float,
    default=0.0,
    show_default=True,
    help="Fraction of the weights of every Conv/ConvTranspose/Gemm/MatMul set to zero, "
    "in [0, 1) (connection pruning; combines with --filters).",
)
@click.option(
    "--weight-criterion",
    default=None,
    help="Which weights go: magnitude (Han's per-layer threshold), global (one magnitude "
    "threshold), wanda, obs (SparseGPT) [default: obs with --calib, else magnitude].",
)
@click.option(
    "--nm",
    default=None,
    metavar="N:M",
    help="Keep N of every M consecutive weights along the input dimension (e.g. 2:4).",
)
@click.option(
    "--sparse-dir",
    type=click.Path(path_type=Path),
    help="Sparse weight blobs + manifest.json [default: OUTPUT.sparse/ beside the model].",
)
@click.option(
    "--sparse-formats",
    default=None,
    metavar="LIST",
    help="Comma list of blob formats (dense, csr, csc, bsr, bitmask, relidx, eie) "
    "[default: dense,csr,csc,bitmask,relidx,eie].",
)
@click.option(
    "--sparse-values",
    default="fp32",
    show_default=True,
    help="Value encoding of the blobs: fp32, fp16 or int8 (symmetric per-tensor scale).",
)
@click.option(
    "--index-bits",
    default=None,
    metavar="N|conv=N,fc=M",
    help="Relative-index width of the relidx blobs [default: conv=4,fc=5].",
)
@click.option(
    "--bsr-block",
    default=None,
    metavar="RxC",
    help="BSR block shape; given explicitly it must divide every pruned weight "
    "[default: 4x1, skipping weights it cannot tile].",
)
@click.option(
    "--eie-pes",
    type=int,
    default=64,
    show_default=True,
    help="Processing elements of the EIE interleaved-CSC blobs.",
)
@click.option(
    "--sparse-initializers",
    is_flag=True,
    help="Store pruned weights as ONNX sparse initializers so the model file shrinks.",
)
@click.option(
    "--accelerator",
    default="generic-45nm",
    show_default=True,
    help="Profile (NAME or FILE.toml) of the report's on-chip fit and energy section; "
    "'none' to skip it.",
)
@click.option("-v", "--verbose", count=True, help="More detail (-vv: debug).")
@click.option("-q", "--quiet", is_flag=True, help="Only errors; no table.")
def prune_command(
    model: Path,
    filters: float,
    output: Path | None,
    calib: Path | None,
    calib_samples: int | None,
    batch_size: int,
    criterion: str | None,
    report_path: Path | None,
    exclude: tuple[str, ...],
    round_to: int,
    seed: int,
    mask_only: bool,
    input_shapes: tuple[str, ...],
    plan_path: Path | None,
    reconstruct: bool | None,
    damping: float,
    uniform: bool,
    max_ratio: float,
    protect: bool | None,
    target_macs: float | None,
    layer_ratio: tuple[str, ...],
    labels: Path | None,
    max_drop: float | None,
    weights: float,
    weight_criterion: str | None,
    nm: str | None,
    sparse_dir: Path | None,
    sparse_formats: str | None,
    sparse_values: str,
    index_bits: str | None,
    bsr_block: str | None,
    eie_pes: int,
    sparse_initializers: bool,
    accelerator: str,
    verbose: int,
    quiet: bool,
) -> None:
    """Remove a fraction of the filters of MODEL and write the pruned model."""
    _setup_logging(verbose, quiet)
    try:
        if criterion is not None and criterion not in CRITERIA:
            from onnxprune.criteria import get_criterion

            get_criterion(criterion)  # raises with the list of valid names
        shapes = dict(parse_input_shape(s) for s in input_shapes)
        options = PruneOptions(
            filters=filters,
            criterion=criterion,
            calib=str(calib) if calib else None,
            calib_samples=calib_samples,
            batch_size=batch_size,
            exclude=tuple(exclude),
            round_to=round_to,
            seed=seed,
            mask_only=mask_only,
            input_shapes=shapes,
            plan=str(plan_path) if plan_path else None,
            reconstruct=reconstruct,
            damping=damping,
            uniform=uniform,
            max_ratio=max_ratio,
            protect=protect,
            target_macs=target_macs,
            layer_ratio=tuple(layer_ratio),
            labels=str(labels) if labels else None,
            max_drop=max_drop,
            accelerator=None if accelerator.lower() == "none" else accelerator,
            weights=weights,
            weight_criterion=weight_criterion,
            nm=nm,
            sparse_dir=str(sparse_dir) if sparse_dir else None,
            sparse_formats=sparse_formats or PruneOptions.sparse_formats,
            sparse_values=sparse_values,
            index_bits=index_bits,
            bsr_block=bsr_block,
            eie_pes=eie_pes,
            sparse_initializers=sparse_initializers,
        )
        result = prune(
            model,
            output or default_output(model),
            options,
            report_path=report_path,
            command=["onnxprune", *sys.argv[1:]],
        )
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line + exit code
        _fail(exc, verbose)
    if not quiet:
        from onnxprune.report import format_table

        click.echo(format_table(result.report))
        click.echo(f"wrote {result.output}" + (f" and {report_path}" if report_path else ""))


@main.command("analyze")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the analysis as JSON.")
@input_shape_option
@click.option("-v", "--verbose", count=True, help="More detail.")
def analyze_command(
    model: Path, as_json: bool, input_shapes: tuple[str, ...], verbose: int
) -> None:
    """Print every channel group of MODEL and why blocked ones are blocked; change nothing."""
    import json

    from onnxprune.analysis import analyze, format_analysis

    _setup_logging(verbose, quiet=False)
    try:
        result = analyze(model, dict(parse_input_shape(s) for s in input_shapes))
    except Exception as exc:  # noqa: BLE001
        _fail(exc, verbose)
    click.echo(json.dumps(result, indent=2) if as_json else format_analysis(result))


@main.command("sensitivity")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--calib", required=True, help="Calibration data (.npz, folder, script.py).")
@click.option("--calib-samples", type=int, default=256, show_default=True)
@click.option("--batch-size", type=int, default=32, show_default=True)
@click.option(
    "--criterion",
    default="energy",
    show_default=True,
    help="Which channels go first at each ratio.",
)
@click.option("--step", type=float, default=0.1, show_default=True, help="Ratio grid step.")
@click.option("--json", "as_json", is_flag=True, help="Print the curves as JSON.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    help="Write a PNG of the curves (needs matplotlib: pip install 'onnxprune[plot]').",
)
@input_shape_option
@click.option("-v", "--verbose", count=True, help="More detail.")
def sensitivity_command(
    model: Path,
    calib: str,
    calib_samples: int,
    batch_size: int,
    criterion: str,
    step: float,
    as_json: bool,
    plot_path: Path | None,
    input_shapes: tuple[str, ...],
    verbose: int,
) -> None:
    """Per-layer sensitivity: each group's re-fit error as a function of its ratio."""
    import json

    from onnxprune.sensitivity_report import format_sensitivity, plot_sensitivity, sensitivity

    _setup_logging(verbose, quiet=False)
    try:
        if not 0.0 < step < 1.0:
            from onnxprune.errors import UsageError

            raise UsageError(f"--step must be in (0, 1), got {step}")
        result = sensitivity(
            model,
            calib,
            criterion,
            calib_samples,
            batch_size,
            step,
            dict(parse_input_shape(s) for s in input_shapes),
        )
        if plot_path:
            plot_sensitivity(result, plot_path)
    except Exception as exc:  # noqa: BLE001
        _fail(exc, verbose)
    click.echo(json.dumps(result, indent=2) if as_json else format_sensitivity(result))
    if plot_path:
        click.echo(f"wrote {plot_path}")


from onnxprune.estimate_cli import estimate_command  # noqa: E402 - after main is defined

main.add_command(estimate_command)
