"""The prune report: before/after costs, groups, plan, fidelity, timings, command.

`build_report` collects the numbers (all computed from the models, none estimated);
`format_table` renders the short before/after table printed on stdout.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import onnx

from onnxprune import __version__
from onnxprune.coverage import coverage, group_mac_share
from onnxprune.depgraph import Group
from onnxprune.metrics import count_params, node_macs, op_counts
from onnxprune.plan import Plan


def model_costs(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, Any]:
    per_node = node_macs(model, input_shapes)
    return {
        "params": count_params(model),
        "macs": sum(per_node.values()),
        "node_macs": per_node,
        "ops": op_counts(model),
        "bytes": model.ByteSize(),
    }


def group_entries(
    groups: Sequence[Group], plan: Plan | None, macs: Mapping[str, int]
) -> list[dict[str, Any]]:
    excluded = {e["group"]: e["pattern"] for e in (plan.excluded if plan else [])}
    entries = []
    for group in groups:
        entry = group.summary()
        entry["macs_share"] = round(group_mac_share(group, macs), 6)
        gplan = plan.for_group(group.id) if plan else None
        entry["channels_before"] = group.channels
        entry["channels_after"] = len(gplan.keep) if gplan else group.channels
        entry["kept"] = gplan.keep if gplan else None
        if group.id in excluded:
            entry["excluded_by"] = excluded[group.id]
        entries.append(entry)
    return entries


def build_report(
    *,
    command: Sequence[str],
    options: Mapping[str, Any],
    before: Mapping[str, Any],
    after: Mapping[str, Any],
    file_size_before: int,
    groups: Sequence[Group],
    plan: Plan | None,
    fidelity: Mapping[str, Any] | None,
    timings: Mapping[str, float],
    reconstruction: Sequence[Mapping[str, Any]] | None = None,
    allocation: Mapping[str, Any] | None = None,
    sparsity: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    blocked = [g for g in groups if not g.prunable]
    return {
        "tool": {"name": "onnxprune", "version": __version__},
        "command": list(command),
        "options": dict(options),
        "params": {"before": before["params"], "after": after["params"]},
        "flops": {"before": before["macs"], "after": after["macs"], "unit": "MACs, batch 1"},
        "size_bytes": {"before": file_size_before, "after": after["bytes"]},
        "ops": {"before": before["ops"], "after": after["ops"]},
        "groups": group_entries(groups, plan, before["node_macs"]),
        "coverage": coverage(groups, before["node_macs"]),
        "summary": {
            "groups": len(groups),
            "prunable": len(groups) - len(blocked),
            "pruned": len([g for g in (plan.groups if plan else []) if g.removed]),
            "blocked": len(blocked),
        },
        "blocked": [
            {"group": g.id, "roots": g.roots, "node": g.blocked_node, "reason": g.blocked}
            for g in blocked
        ],
        "plan": plan.to_json() if plan else None,
        "fidelity": dict(fidelity) if fidelity else None,
        "allocation": dict(allocation) if allocation else None,
        "reconstruction": list(reconstruction) if reconstruction else None,
        "sparsity": dict(sparsity) if sparsity else None,
        "timings": dict(timings),
    }


def _human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _change(before: float, after: float) -> str:
    if before == 0:
        return ""
    return f"{(after - before) / before * 100:+.1f}%"


def format_table(report: Mapping[str, Any]) -> str:
    """The before/after table: ops, params, MACs, size, then fidelity and time."""
    rows = [("", "before", "after", "change")]
    ops_b, ops_a = report["ops"]["before"], report["ops"]["after"]
    rows.append(("nodes", str(sum(ops_b.values())), str(sum(ops_a.values())), ""))
    for key, label in (("params", "params"), ("flops", "MACs")):
        b, a = report[key]["before"], report[key]["after"]
        rows.append((label, _human(b), _human(a), _change(b, a)))
    b, a = report["size_bytes"]["before"], report["size_bytes"]["after"]
    rows.append(("file size", _human(b) + "B", _human(a) + "B", _change(b, a)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        "  ".join(
            c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    s = report["summary"]
    lines.append(
        f"groups: {s['groups']} found, {s['pruned']} pruned, {s['blocked']} blocked"
        + (" (see report 'blocked')" if s["blocked"] else "")
    )
    lines += _sparsity_lines(report.get("sparsity"))
    fid = report.get("fidelity")
    if fid:
        for out in fid["outputs"]:
            top1 = (
                f", top-1 agreement {out['top1_agreement']:.3f}"
                if out["top1_agreement"] is not None
                else ""
            )
            lines.append(
                f"fidelity '{out['output']}' on {fid['samples']} {fid['inputs']} inputs: "
                f"cosine {out['cosine_similarity']:.4f}, max |diff| {out['max_abs_diff']:.3g}{top1}"
            )
    lines += _estimate_lines(report.get("estimate"))
    lines.append(f"time: {sum(report['timings'].values()):.2f} s")
    return "\n".join(lines)


def _sparsity_lines(section: Mapping[str, Any] | None) -> list[str]:
    """Connection pruning in two lines: zeros and MACs, then blob bytes."""
    if not section:
        return []
    t = section["totals"]
    lines = [
        f"weights: {t['sparsity'] * 100:.1f}% zero in {t['layers']} layers "
        f"({_human(t['nnz'])} of {_human(t['elements'])} kept, {section['criterion']}); "
        f"MACs with zero skipping {_human(t['effective_macs'])} "
        f"({_change(t['macs'], t['effective_macs'])})"
    ]
    if "best_bytes" in t:
        where = (section.get("blobs") or {}).get("directory")
        lines.append(
            f"sparse blobs: best {_human(t['best_bytes'])}B vs dense {_human(t['dense_bytes'])}B"
            + (f" in {where}" if where else "")
        )
    return lines


def _estimate_lines(section: Mapping[str, Any] | None) -> list[str]:
    """Energy per inference and on-chip fit, before and after (onnxprune.estimate)."""
    if not section:
        return []
    b, a = section["before"], section["after"]

    def fit(e: Mapping[str, Any]) -> str:
        return (
            "all weights on chip"
            if e["fit"]["on_chip"]
            else (f"{_human(e['dram_bytes_per_inference'])}B/inference from DRAM")
        )

    return [
        f"energy/inference on {section['accelerator']}: {_joules(b['energy_pj']['total'])} -> "
        f"{_joules(a['energy_pj']['total'])}; before: {fit(b)}; after: {fit(a)}"
    ]


def _joules(picojoules: float) -> str:
    for unit, scale in (("J", 1e12), ("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if picojoules >= scale:
            return f"{picojoules / scale:.3g} {unit}"
    return f"{picojoules:.3g} pJ"
