"""AlexNet at Han et al. 2015's densities on the built-in accelerators: the worked example.

    python tools/bench_estimate.py

Folds the onnx wheel's light AlexNet (real layer shapes), draws seeded random weights,
prunes each layer by magnitude to Han's kept fraction, and estimates the dense and the
pruned model on several profiles. Writes the dense-vs-pruned table into README.md
(between the bench_estimate markers), the energy plot docs/estimate-alexnet.png, and the
"Accelerator estimate (issue 5)" section of BENCHMARKS.md (with wall times).
"""

from __future__ import annotations

import re
import time

from benchlib import ROOT, machine, markdown_table, update_section
from han_alexnet import alexnet_models

from onnxprune.estimate import estimate, load_profile, plot_energy
from onnxprune.estimate.report import human_bytes, human_count, human_energy

DOC = ROOT / "README.md"
PLOT = ROOT / "docs" / "estimate-alexnet.png"
BEGIN, END = "<!-- bench_estimate:begin -->", "<!-- bench_estimate:end -->"
# (label, profile, --sram-bytes, --layers)
CASES = (
    ("generic-45nm", "generic-45nm", None, ()),
    ("generic-45nm --sram-bytes 32MiB", "generic-45nm", "32MiB", ()),
    ("eie-64pe --layers 'fc*'", "eie-64pe", None, ("fc*",)),
    ("eie-64pe", "eie-64pe", None, ()),
    ("edge-tpu", "edge-tpu", None, ()),
)


def row(label: str, which: str, r: dict) -> list[str]:
    fit, e = r["fit"], r["energy_pj"]
    on = "yes" if fit["on_chip"] else f"{fit['layers_on_chip']}/{len(fit['layers'])} layers"
    return [
        f"`{label}`", which, human_count(r["params"]["weights_nonzero"]),
        human_bytes(fit["weights_bytes"]), on, human_bytes(r["dram_bytes_per_inference"]),
        human_energy(e["arithmetic"]), human_energy(e["sram"]), human_energy(e["dram"]),
        f"**{human_energy(e['total'])}**",
    ]  # fmt: skip


def main() -> None:
    start = time.perf_counter()
    dense, pruned = alexnet_models()
    setup = time.perf_counter() - start
    rows, timings, plots = [], [], []
    eie_fc = None
    for label, name, sram, layers in CASES:
        profile = load_profile(name, sram_bytes=sram)
        results = []
        for which, model in (("dense", dense), ("pruned", pruned)):
            t = time.perf_counter()
            results.append(estimate(model, profile, layers=layers, normalize=False))
            timings.append([f"`{label}`", which, f"{time.perf_counter() - t:.1f}"])
            rows.append(row(label, which, results[-1]))
        if name == "generic-45nm":
            size = "1 MiB" if sram is None else sram.replace("MiB", " MiB")
            if sram is None:
                plots.append((f"dense\n{size} SRAM", results[0]))
            plots.append((f"pruned\n{size} SRAM", results[1]))
        if layers == ("fc*",):
            eie_fc = results[1]
    header = ["accelerator", "AlexNet", "non-zero weights", "weight bytes", "on chip",
              "DRAM / inference", "arithmetic", "SRAM", "DRAM", "total"]  # fmt: skip
    table = markdown_table(header, rows)
    plot_energy(plots, PLOT, title="AlexNet on generic-45nm, Han 2015 densities")
    per_pe = eie_fc["fit"]["per_pe"]
    fc_rows = [
        [r["weight"], r["pe_max_entries"], r["pe_max_bytes"], r["pointer_bytes_per_pe"],
         "yes" if r["on_chip"] else f"no: {r['reason']}"]
        for r in eie_fc["fit"]["layers"]
    ]  # fmt: skip
    fc_table = markdown_table(
        ["layer", "entries on fullest PE", "bytes on fullest PE", "pointer bytes per PE",
         "on chip"],
        fc_rows,
    )  # fmt: skip
    fc_note = (
        f"All three FC layers together need {per_pe['weight_bytes_needed_max']:,} B on the "
        f"fullest PE of {per_pe['sram_bytes']:,} B of sparse-matrix SRAM, and "
        f"{per_pe['pointer_bytes_needed']:,} B of column pointers per PE of "
        f"{per_pe['pointer_sram_bytes']:,} B."
    )
    block = f"{BEGIN}\n{table}\n\n{fc_table}\n\n{fc_note}\n{END}"
    text = DOC.read_text(encoding="utf-8")
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    DOC.write_text(text, encoding="utf-8")
    body = (
        "`python tools/bench_estimate.py` — AlexNet (onnx light zoo shapes, seeded random "
        "weights) dense and pruned per layer to Han et al. 2015's densities, estimated on "
        f"built-in profiles; {machine()}. Folding and weight set-up: {setup:.1f} s.\n\n"
        + table
        + "\n\nWall time of one `estimate` call:\n\n"
        + markdown_table(["accelerator", "AlexNet", "seconds"], timings)
    )
    update_section("Accelerator estimate (issue 5)", body)
    print(table)
    print(fc_table)
    print(fc_note)


if __name__ == "__main__":
    main()
