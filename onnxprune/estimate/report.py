"""Text for humans: one estimate, or several models side by side (dense vs pruned)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# (label, path into the estimate) of the figures a before/after comparison shows.
COMPARED = (
    ("non-zero weights", "params.weights_nonzero"),
    ("MACs computed", "macs.computed"),
    ("weight bytes", "fit.weights_bytes"),
    ("on chip", "fit.on_chip"),
    ("DRAM bytes / inference", "dram_bytes_per_inference"),
    ("energy: arithmetic", "energy_pj.arithmetic"),
    ("energy: SRAM", "energy_pj.sram"),
    ("energy: DRAM", "energy_pj.dram"),
    ("energy: total", "energy_pj.total"),
)


def _get(result: Mapping[str, Any], path: str) -> Any:
    value: Any = result
    for part in path.split("."):
        value = value[part]
    return value


def compare(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict[str, Any]:
    """{path: {"before", "after"}} of the compared figures (for a prune report section)."""
    return {
        path: {"before": _get(before, path), "after": _get(after, path)} for _, path in COMPARED
    }


def human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def human_count(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def human_energy(pj: float) -> str:
    for unit, scale in (("mJ", 1e9), ("µJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def _table(rows: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """Columns padded to their widest cell: the first `left` left-aligned, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < left else c.rjust(widths[i]) for i, c in enumerate(r)]
        lines.append("  ".join(cells).rstrip())
    return lines


def describe_profile(acc: Mapping[str, Any]) -> list[str]:
    pes = (
        f"{acc['n_pe']} PEs x {human_bytes(acc['sram_bytes_per_pe'])} = " if acc["n_pe"] > 1 else ""
    )
    fmt = acc["sparse_format"]
    if fmt != "dense":
        fmt += " weights" + (" (dense when smaller)" if acc["dense_fallback"] else "")
    else:
        fmt = "dense weights"
    zeros = "zero weights skipped" if acc["skip_zeros"] else "every MAC computed"
    bits = acc["bits_per_value"]
    lines = [
        f"accelerator  {acc['name']}: {pes}{human_bytes(acc['sram_bytes'])} weight SRAM, "
        f"{acc['dtype']} ({bits}-bit values), {fmt}, {zeros}",
        f"constants    MAC {acc['pj_per_mac_used']:g} pJ ({acc['dtype']}) · SRAM "
        f"{acc['pj_sram_access']:g} pJ, DRAM {acc['pj_dram_access']:g} pJ per "
        f"{acc['word_bits']}-bit access",
    ]
    if acc.get("pointer_sram_bytes") is not None:
        lines.append(
            f"             {acc['pointer_bits']}-bit column pointers in their own "
            f"{human_bytes(acc['pointer_sram_bytes'])} SRAM"
        )
    return lines


def format_estimate(result: Mapping[str, Any], name: str | None = None, energy: bool = True) -> str:
    """Summary, per-layer fit table and (with `energy`) the energy break-down."""
    acc = result["accelerator"]
    params, macs, fit, acts = result["params"], result["macs"], result["fit"], result["activations"]
    lines = [f"model        {name}"] if name else []
    lines += describe_profile(acc)
    density = params["weights_density"] * 100
    lines.append(
        f"params       {human_count(params['total'])} ({human_count(params['nonzero'])} non-zero); "
        f"layer weights {human_count(params['weights_total'])}, "
        f"{human_count(params['weights_nonzero'])} non-zero ({density:.1f}%)"
    )
    storage = result["storage_bytes"]
    dense = " · ".join(
        f"{k[6:]} {human_bytes(storage[k])}" for k in storage if k.startswith("dense_")
    )
    sparse = " · ".join(
        f"{k} {human_bytes(v)}" for k, v in storage.items() if not k.startswith("dense")
    )
    lines.append(f"storage      dense {dense}")
    lines.append(f"             {result['storage_value_dtype']} values: {sparse}  (blob bytes)")
    lines.append(
        f"MACs         {human_count(macs['dense'])} dense · {human_count(macs['effective'])} "
        f"non-zero · {human_count(macs['computed'])} computed"
    )
    where = (
        "on chip (no buffer size given)"
        if acts["buffer_bytes"] is None
        else f"{'on chip' if acts['on_chip'] else 'DRAM'} "
        f"({human_bytes(acts['peak_bytes_in_selected_layers'])} live vs "
        f"{human_bytes(acts['buffer_bytes'])} buffer)"
    )
    lines.append(
        f"activations  peak {human_bytes(acts['peak_bytes'])} at {acts['peak_node']}; {where}"
    )
    n = len(fit["layers"])
    verdict = (
        "ALL FIT" if fit["on_chip"] else f"DO NOT ALL FIT: {fit['layers_on_chip']} of {n} layers"
    )
    pointer_sram = acc.get("pointer_sram_bytes")
    extra = f" + {human_bytes(pointer_sram)} pointer SRAM" if pointer_sram is not None else ""
    lines.append(
        f"fit          {human_bytes(fit['weights_bytes'])} of weights for "
        f"{human_bytes(fit['sram_bytes'])} SRAM{extra}: {verdict} on chip ({fit['policy']}); "
        f"{human_bytes(result['dram_bytes_per_inference'])} from DRAM per inference"
    )
    per_pe = fit.get("per_pe")
    if per_pe:
        text = (
            f"per PE       all layers need {human_bytes(per_pe['weight_bytes_needed_max'])} of "
            f"{human_bytes(per_pe['sram_bytes'])} on the fullest PE"
        )
        if per_pe["pointer_sram_bytes"] is not None:
            text += (
                f"; pointers {human_bytes(per_pe['pointer_bytes_needed'])} of "
                f"{human_bytes(per_pe['pointer_sram_bytes'])}"
            )
        lines.append(text)
    lines.append("")
    rows = [["layer", "op", "weight", "shape", "density", "format", "bytes", "on chip", "energy"]]
    for r in fit["layers"]:
        rows.append([
            r["node"], r["op"], r["weight"], "x".join(map(str, r["shape"])),
            f"{r['density'] * 100:.1f}%", r["format"], human_bytes(r["weights_bytes"]),
            "yes" if r["on_chip"] else "no", human_energy(r["energy_pj"]["total"]),
        ])  # fmt: skip
    lines += _table(rows, left=4)
    for r in fit["layers"]:
        if r.get("reason"):
            lines.append(f"  {r['node']} streams from DRAM: {r['reason']}")
    if energy:
        lines += ["", *energy_table([("", result)])]
    return "\n".join(lines)


def energy_table(results: Sequence[tuple[str, Mapping[str, Any]]]) -> list[str]:
    """Energy per inference, one column per model, with each part's share of the total."""
    header = ["energy per inference"]
    for label, _ in results:
        header += [label or "pJ", "share"]
    rows = [header]
    for part in ("arithmetic", "sram", "dram", "total"):
        row = [{"sram": "SRAM", "dram": "DRAM"}.get(part, part)]
        for _, r in results:
            e = r["energy_pj"]
            share = e[part] / e["total"] * 100 if e["total"] else 0.0
            row += [human_energy(e[part]), f"{share:.1f}%"]
        rows.append(row)
    return _table(rows)


def format_comparison(results: Sequence[tuple[str, Mapping[str, Any]]], header: bool = True) -> str:
    """Key figures of models side by side (first = baseline) with the relative change."""
    lines = describe_profile(results[0][1]["accelerator"]) if header else []
    rows = [["", *[label for label, _ in results]] + (["change"] if len(results) == 2 else [])]
    for label, path in COMPARED:
        if path.startswith("energy_pj.") and path != "energy_pj.total":
            continue  # the energy table that follows breaks it down
        values = [_get(r, path) for _, r in results]
        if isinstance(values[0], bool):
            cells = ["yes" if v else "no" for v in values]
        elif "bytes" in label.lower():
            cells = [human_bytes(v) for v in values]
        elif path.startswith("energy_pj"):
            cells = [human_energy(v) for v in values]
        else:
            cells = [human_count(v) for v in values]
        change = []
        if len(values) == 2 and not isinstance(values[0], bool):
            change = [f"{(values[1] - values[0]) / values[0] * 100:+.1f}%" if values[0] else ""]
        elif len(values) == 2:
            change = [""]
        rows.append([label, *cells, *change])
    lines += _table(rows)
    return "\n".join(lines)
