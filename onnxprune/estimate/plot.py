"""Stacked bar chart of energy per inference (arithmetic, SRAM, DRAM), one bar per model.

matplotlib is an optional extra (`pip install 'onnxprune[plot]'`); it is imported only
when a plot is asked for, and used through `Figure` alone (no pyplot, no backend switch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from onnxprune.errors import OutputError, UsageError
from onnxprune.modelio import atomic_path

PARTS = (("arithmetic", "arithmetic", "#4C72B0"), ("sram", "SRAM", "#55A868"),
         ("dram", "DRAM", "#C44E52"))  # fmt: skip


def _figure_class():
    """matplotlib's Figure, used without pyplot: no global backend or state is touched."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, an optional extra: pip install 'onnxprune[plot]' "
            "(or pip install matplotlib)"
        ) from None
    return Figure


def check_plot_path(path: str | Path) -> Path:
    """Fail early: matplotlib missing, not a .png, or a directory that does not exist."""
    _figure_class()
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG; give a path ending in .png, got {path}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise OutputError(f"plot directory does not exist: {parent}")
    return path


def plot_energy(
    results: Sequence[tuple[str, Mapping[str, Any]]], path: str | Path, title: str | None = None
) -> Path:
    """Write a PNG with one stacked bar per (label, estimate); returns the path."""
    if not results:
        raise UsageError("plot_energy needs at least one estimate")
    path = check_plot_path(path)
    figure = _figure_class()
    top = max(r["energy_pj"]["total"] for _, r in results)
    units = ((1e9, "mJ"), (1e6, "µJ"), (1e3, "nJ"))
    scale, unit = next(((s, u) for s, u in units if top >= s), (1.0, "pJ"))
    fig = figure(figsize=(2.0 + 1.6 * len(results), 4.5), dpi=120)
    ax = fig.subplots()
    x = list(range(len(results)))
    bottom = [0.0] * len(results)
    for key, name, color in PARTS:
        values = [r["energy_pj"][key] / scale for _, r in results]
        ax.bar(x, values, bottom=bottom, label=name, color=color, width=0.6)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(x, [label for label, _ in results], fontsize=9)
    ax.set_xlim(-0.7, len(results) - 0.3)
    for i, total in enumerate(bottom):
        ax.text(i, total, f"{total:.3g}", ha="center", va="bottom", fontsize=9)
    acc = results[0][1]["accelerator"]
    ax.set_ylabel(f"energy per inference ({unit})")
    ax.set_title(title or f"{acc['name']}: energy per inference", fontsize=10)
    ax.set_ylim(0, max(bottom) * 1.3 or 1.0)  # room for the totals and the legend
    ax.legend(loc="upper right", fontsize=8, ncols=3)
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", metadata={"Software": None})
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path
