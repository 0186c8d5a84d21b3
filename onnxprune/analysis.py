"""`onnxprune analyze`: the dependency groups of a model, without changing anything."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from onnxprune.coverage import coverage, group_mac_share
from onnxprune.metrics import node_macs
from onnxprune.pipeline import Context, run_pipeline


def analyze(
    model_path: str | Path, input_shapes: Mapping[str, tuple[int, ...]] | None = None
) -> dict[str, Any]:
    """Groups (members, channels, MAC share) and blocked groups with reasons, plus coverage."""
    from onnxprune.passes import PASSES

    ctx = Context(input_shapes=dict(input_shapes or {}))
    passes = [PASSES["load"](path=str(model_path)), PASSES["normalize"](), PASSES["groups"]()]
    run_pipeline(passes, ctx)
    macs = node_macs(ctx.original, ctx.input_shapes)
    groups = []
    for group in ctx.groups:
        entry = group.summary()
        entry["macs_share"] = round(group_mac_share(group, macs), 6)
        groups.append(entry)
    return {
        "model": str(model_path),
        "groups": groups,
        "coverage": coverage(ctx.groups, macs),
        "timings": ctx.timings,
    }


def format_analysis(result: Mapping[str, Any]) -> str:
    lines = []
    for g in result["groups"]:
        state = "prunable" if g["blocked"] is None else "BLOCKED"
        lines.append(
            f"group {g['id']:>3}  {state:<8} {g['channels']:>5} ch  "
            f"{g['macs_share'] * 100:5.1f}% MACs  roots: {', '.join(g['roots'])}"
        )
        members = sorted({p["node"] for p in g["params"]} - set(g["roots"]))
        if members:
            lines.append(f"           also shrinks: {', '.join(members)}")
        if g["blocked"]:
            lines.append(f"           reason: {g['blocked']}")
    cov = result["coverage"]
    n_blocked = len(cov["blocked"])
    lines.append(
        f"{len(result['groups'])} groups, {len(result['groups']) - n_blocked} prunable, "
        f"{n_blocked} blocked; prunable MAC fraction "
        f"{cov['prunable_flops_fraction'] * 100:.1f}% of {cov['total_macs']:,} MACs"
    )
    return "\n".join(lines)
