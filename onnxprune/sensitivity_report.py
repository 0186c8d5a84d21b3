"""`onnxprune sensitivity`: per-group re-fit error curves, as text, JSON and a PNG plot."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from onnxprune.coverage import group_mac_share
from onnxprune.errors import UsageError
from onnxprune.metrics import node_macs
from onnxprune.pipeline import Context, run_pipeline
from onnxprune.sensitivity import consumers_of, gram_matrices, group_curve


def sensitivity(
    model_path: str | Path,
    calib: str,
    criterion: str = "energy",
    samples: int = 256,
    batch_size: int = 32,
    step: float = 0.1,
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, Any]:
    """Relative re-fit error of each prunable group's consumers at ratios 0, step, ..."""
    from onnxprune.passes import PASSES, scoring_passes

    ctx = Context(input_shapes=dict(input_shapes or {}))
    passes = [
        PASSES["load"](path=str(model_path)),
        PASSES["normalize"](),
        PASSES["calibrate"](calib=calib, samples=samples, batch_size=batch_size),
        PASSES["groups"](),
    ]
    passes += scoring_passes(criterion)
    run_pipeline(passes, ctx)
    groups = [g for g in ctx.groups if g.prunable]
    consumers = {g.id: consumers_of(g, ctx.original) for g in groups}
    grams = gram_matrices(
        ctx.original, [c for cs in consumers.values() for c in cs], ctx.calibration.batches("grams")
    )
    grid = [round(float(r), 6) for r in np.arange(0.0, 0.95 + 1e-9, step)]
    macs = node_macs(ctx.original, ctx.input_shapes)
    rows = []
    for g in groups:
        curve = group_curve(g, consumers[g.id], grams, ctx.scores[g.id], grid)
        rows.append(
            {
                "group": g.id,
                "roots": g.roots,
                "channels": g.channels,
                "macs_share": round(group_mac_share(g, macs), 6),
                "ratios": curve.ratios,
                "errors": [round(e, 6) for e in curve.errors],
            }
        )
    return {
        "model": str(model_path),
        "criterion": criterion,
        "calibration": calib,
        "samples": ctx.calibration.samples,
        "groups": rows,
    }


def format_sensitivity(
    result: Mapping[str, Any], columns: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
) -> str:
    header = (
        f"{'group':>5} {'ch':>5} {'MACs':>6}  "
        + "  ".join(f"r={c:<4}" for c in columns)
        + "  roots"
    )
    lines = [
        f"relative re-fit error of each group's consumers ({result['criterion']}, "
        f"{result['samples']} samples)",
        header,
    ]
    for row in result["groups"]:
        errors = dict(zip(row["ratios"], row["errors"], strict=True))
        cells = "  ".join(f"{_nearest(errors, c):6.4f}" for c in columns)
        lines.append(
            f"{row['group']:>5} {row['channels']:>5} {row['macs_share'] * 100:5.1f}%  "
            f"{cells}  {', '.join(row['roots'])}"
        )
    return "\n".join(lines)


def _nearest(errors: Mapping[float, float], ratio: float) -> float:
    key = min(errors, key=lambda r: abs(r - ratio))
    return errors[key]


def plot_sensitivity(result: Mapping[str, Any], path: str | Path) -> None:
    """Write a PNG of the curves (needs the optional 'plot' extra: matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise UsageError("--plot needs matplotlib: pip install 'onnxprune[plot]'") from exc
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    for row in result["groups"]:
        label = f"{row['group']}: {row['roots'][0]} ({row['channels']} ch)"
        ax.plot(row["ratios"], row["errors"], marker="o", markersize=3, label=label)
    ax.set_xlabel("fraction of the group's channels removed")
    ax.set_ylabel("relative re-fit error of its consumers")
    ax.set_title(f"Sensitivity of {Path(result['model']).name} ({result['criterion']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
