"""`onnxprune estimate MODEL.onnx`: on-chip fit and energy per inference on an accelerator.

Registered in the main group by `onnxprune.cli` (`main.add_command(estimate_command)`).
Errors print one line, `onnxprune: error: ...`, and exit with the documented code.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from onnxprune.cli_options import input_shape_option
from onnxprune.errors import PruneError
from onnxprune.estimate.profiles import BUILTIN
from onnxprune.sparse import VALUE_TYPES

log = logging.getLogger("onnxprune")


def _load(path: Path, shapes: dict[str, tuple[int, ...]]):
    """Load, check and normalize (fold computed weights) exactly as `prune` does."""
    from onnxprune.passes import PASSES
    from onnxprune.pipeline import Context, run_pipeline

    ctx = Context(input_shapes=dict(shapes))
    run_pipeline([PASSES["load"](path=str(path)), PASSES["normalize"]()], ctx)
    return ctx.original


def _labels(model: Path, other: Path | None) -> tuple[str, str]:
    """Short names for the two columns: file names, or more when those coincide."""
    if other is None:
        return model.name, ""
    if model.name != other.name:
        return model.name, other.name
    if str(model) != str(other):
        return str(model), str(other)
    return f"{model.name}", f"{other.name} (baseline)"


def run_estimate(
    model: Path,
    accelerator: str,
    sram_bytes: str | None,
    dtype: str | None,
    layers: tuple[str, ...],
    compare_path: Path | None,
    as_json: bool,
    plot: Path | None,
    input_shapes: tuple[str, ...],
) -> str:
    """Everything the command does except exiting; returns what it prints."""
    from onnxprune.calib import parse_input_shape
    from onnxprune.estimate import (
        estimate,
        format_comparison,
        format_estimate,
        load_profile,
        plot_energy,
    )
    from onnxprune.estimate.plot import check_plot_path
    from onnxprune.estimate.report import energy_table

    profile = load_profile(accelerator, sram_bytes=sram_bytes, dtype=dtype)
    if plot is not None:
        check_plot_path(plot)  # before minutes of work: matplotlib present, path writable
    shapes = dict(parse_input_shape(s) for s in input_shapes)
    label, other_label = _labels(model, compare_path)
    result: dict[str, Any] = {"model": str(model)}
    result.update(estimate(_load(model, shapes), profile, shapes, layers=layers))
    runs = [(label, result)]
    if compare_path is not None:
        other: dict[str, Any] = {"model": str(compare_path)}
        other.update(estimate(_load(compare_path, shapes), profile, shapes, layers=layers))
        result["compare"] = other
        runs.insert(0, (other_label, other))
    if plot is not None:
        plot_energy(runs, plot)
    if as_json:
        return json.dumps(result, indent=2)
    if compare_path is None:
        text = format_estimate(result, label)
    else:
        text = format_estimate(result, label, energy=False)
        text += f"\n\ncompared with {other_label}:\n" + format_comparison(runs, header=False)
        text += "\n\n" + "\n".join(energy_table(runs))
    if plot is not None:
        text += f"\n\nwrote {plot}"
    return text


@click.command("estimate")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-a",
    "--accelerator",
    default="generic-45nm",
    show_default=True,
    metavar="NAME|FILE.toml",
    help=f"Built-in profile ({', '.join(BUILTIN)}) or a TOML profile file.",
)
@click.option(
    "--sram-bytes",
    metavar="N",
    help="Weight SRAM size in bytes (or 512KiB, 2MB...), replacing the profile's.",
)
@click.option(
    "--dtype",
    type=click.Choice(list(VALUE_TYPES)),
    help="Value type of weights and MACs, replacing the profile's.",
)
@click.option(
    "--layers",
    multiple=True,
    metavar="GLOB",
    help="Only layers whose node or weight name matches GLOB (repeatable).",
)
@click.option(
    "--compare",
    "compare_path",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OTHER.onnx",
    help="A baseline model (e.g. the dense original) shown and plotted beside MODEL.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the estimate as JSON.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="OUT.png",
    help="Write a stacked bar chart of energy per inference (needs matplotlib).",
)
@input_shape_option
@click.option("-v", "--verbose", count=True, help="Tracebacks for internal errors.")
def estimate_command(
    model: Path,
    accelerator: str,
    sram_bytes: str | None,
    dtype: str | None,
    layers: tuple[str, ...],
    compare_path: Path | None,
    as_json: bool,
    plot: Path | None,
    input_shapes: tuple[str, ...],
    verbose: int,
) -> None:
    """Does MODEL's weight set fit on an accelerator, and what does an inference cost?

    Prints weight storage per format, MACs (dense, non-zero, computed), peak activation
    memory, which layers' weights fit in on-chip SRAM and how many bytes stream from
    DRAM, and energy per inference (arithmetic, SRAM, DRAM) with the constants used.
    """
    try:
        text = run_estimate(
            model, accelerator, sram_bytes, dtype, layers, compare_path, as_json, plot,
            input_shapes,
        )  # fmt: skip
    except PruneError as exc:
        click.echo(f"onnxprune: error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except Exception:
        if verbose:
            raise
        click.echo("onnxprune: internal error (a bug); rerun with -v for the traceback", err=True)
        sys.exit(1)
    click.echo(text)
