"""`estimate(model, profile)`: storage, MACs, activation peak, on-chip fit and energy.

Everything is computed from the model's own weights and inferred shapes at batch 1;
the assumptions are the module docstrings of `storage`, `fit`, `activations` and
`energy`, repeated in the result's `assumptions` so a report carries them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnxprune.errors import UsageError
from onnxprune.estimate import activations as act
from onnxprune.estimate.energy import Energy, computed_macs, layer_energy, words
from onnxprune.estimate.fit import POLICY, Placement, place
from onnxprune.estimate.layers import (
    WeightLayer,
    float_params,
    mac_nodes,
    node_label,
    select,
    skeleton,
    weight_array,
    weight_layers,
)
from onnxprune.estimate.profiles import Profile, load_profile
from onnxprune.estimate.report import compare
from onnxprune.estimate.storage import STORAGE_KEYS, LayerStorage, blob_sizes, layer_storage
from onnxprune.graph import real_inputs
from onnxprune.metrics import MAC_OPS, node_macs
from onnxprune.sparse import VALUE_TYPES, to_matrix

ASSUMPTIONS = (
    "batch 1; shapes from ONNX shape inference (dynamic dims = 1 or --input-shape)",
    "weights of Conv/ConvTranspose/Gemm/MatMul are read once per inference from where they "
    "live (SRAM if on chip, else DRAM); biases and other parameters are not placed",
    "layers are placed first fit in graph order; all weights fit iff their total fits",
    "each layer stores its weights in the profile's sparse format, or dense when smaller "
    "(unless the chip reads only its sparse format)",
    "each MAC layer reads its activation inputs once and writes its outputs once: from SRAM "
    "if the live activations fit the activation buffer (no size given: assumed to fit), "
    "else from DRAM",
    "not modelled: partial sums, register files, on-chip network, control, leakage, "
    "tiling re-reads, SRAM energy growing with array size, operator fusion",
)


_WEIGHT_PRODUCERS = {
    "Constant", "ConstantOfShape", "Identity", "Cast", "Reshape", "Unsqueeze", "Squeeze",
    "Transpose", "Flatten",
}  # fmt: skip


def _needs_normalize(model: onnx.ModelProto) -> bool:
    """True when some MAC weight is computed by a node (Constant, ConstantOfShape, Cast...)."""
    inits = {i.name for i in model.graph.initializer}
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type in MAC_OPS and len(node.input) > 1:
            operand = node.input[1]
            if operand not in inits and producers.get(operand) in _WEIGHT_PRODUCERS:
                return True
    return False


def normalized(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with computed weights folded into initializers (the `normalize` pass)."""
    from onnxprune.passes import PASSES  # passes import the core; import them late
    from onnxprune.pipeline import Context, run_pipeline

    ctx = run_pipeline([PASSES["normalize"]()], Context(source=model), initially=("source",))
    return ctx.original


def _check_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    names = {i.name for i in real_inputs(model)}
    unknown = sorted(set(shapes) - names)
    if unknown:
        raise UsageError(
            f"--input-shape names unknown input(s) {unknown}; inputs: {', '.join(sorted(names))}"
        )


@dataclass(frozen=True)
class _Stored:
    """A weight layer with its counts and its footprint on the chip."""

    layer: WeightLayer
    shape: tuple[int, ...]
    elements: int
    nonzero: int
    storage: LayerStorage


def _store(
    model: onnx.ModelProto, wlayers: Sequence[WeightLayer], p: Profile
) -> tuple[list[_Stored], dict[str, int | None], dict[str, str]]:
    """Every layer's footprint under `p`, and blob bytes per format summed over layers
    (None, with the reason in `skipped`, when a format cannot hold some layer)."""
    totals: dict[str, int | None] = dict.fromkeys(STORAGE_KEYS, 0)
    skipped: dict[str, str] = {}
    stored = []
    for layer in wlayers:
        array = weight_array(model, layer.weight)
        matrix = to_matrix(array, layer.kind)
        for key, size in blob_sizes(matrix, layer.kind, p.dtype).items():
            if isinstance(size, str):
                skipped.setdefault(key, f"{layer.weight}: {size}")
                totals[key] = None
            elif key not in skipped:
                totals[key] += size
        nonzero = int(np.count_nonzero(array))
        shape = tuple(int(d) for d in array.shape)
        stored.append(
            _Stored(layer, shape, int(array.size), nonzero, layer_storage(matrix, layer.kind, p))
        )
    return stored, totals, skipped


def _layer_row(s: _Stored, pl: Placement, macs: int, done: int, e: Energy) -> dict[str, Any]:
    st = s.storage
    row: dict[str, Any] = {
        "node": s.layer.node, "op": s.layer.op, "weight": s.layer.weight,
        "shape": list(s.shape), "kind": s.layer.kind, "elements": s.elements,
        "nonzero": s.nonzero, "density": s.nonzero / s.elements if s.elements else 0.0,
        "macs": macs, "macs_effective": _scale(macs, s.nonzero, s.elements),
        "macs_computed": done, "format": st.format, "weights_bytes": st.bytes,
        "on_chip": pl.on_chip,
    }  # fmt: skip
    if len(s.layer.nodes) > 1:
        row["nodes"] = list(s.layer.nodes)
    if pl.reason:
        row["reason"] = pl.reason
    if st.note:
        row["note"] = st.note
    if st.format == "eie":
        row["pe_max_bytes"] = int(st.bank_bytes.max())
        row["pe_max_entries"] = st.max_pe_entries
        row["pointer_bytes_per_pe"] = st.details["pointer_bytes_per_pe"]
    row["energy_pj"] = e.to_json()
    return row


def _scale(macs: int, part: int, whole: int) -> int:
    """macs x part / whole, rounded (exact integer arithmetic)."""
    return (macs * part + whole // 2) // whole if whole else macs


def _fit_summary(stored: Sequence[_Stored], placements: Sequence[Placement], p: Profile):
    on = [s.storage for s, pl in zip(stored, placements, strict=True) if pl.on_chip]
    banks = sum((s.storage.bank_bytes for s in stored), np.zeros(p.n_pe, dtype=np.int64))
    summary: dict[str, Any] = {
        "on_chip": all(pl.on_chip for pl in placements),
        "policy": POLICY,
        "sram_bytes": p.sram_bytes,
        "weights_bytes": sum(s.storage.bytes for s in stored),
        "on_chip_bytes": sum(st.bytes for st in on),
        "layers_on_chip": len(on),
    }
    if p.n_pe > 1 or p.pointer_sram_bytes is not None:
        # What every layer together asks of one PE: the numbers behind a "does not fit".
        summary["per_pe"] = {
            "sram_bytes": p.bank_bytes,
            "weight_bytes_needed_max": int(banks.max()) if len(stored) else 0,
            "pointer_sram_bytes": None
            if p.pointer_sram_bytes is None
            else p.pointer_sram_bytes // p.n_pe,
            "pointer_bytes_needed": sum(s.storage.pointer_bytes for s in stored),
        }
    return summary


def estimate(
    model: onnx.ModelProto,
    profile: str | Path | Profile = "generic-45nm",
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    layers: Sequence[str] = (),
    normalize: bool = True,
) -> dict[str, Any]:
    """Storage, MACs, activation peak, on-chip fit and energy of `model` on `profile`.

    profile: a built-in name, a TOML path or a Profile. layers: GLOBs (node or weight
    name) restricting the estimate to the layers the accelerator runs; params.total and
    params.nonzero always cover the whole model. The result is plain JSON data.
    """
    p = load_profile(profile)
    shapes = {k: tuple(v) for k, v in (input_shapes or {}).items()}
    if normalize and _needs_normalize(model):
        model = normalized(model)
    _check_shapes(model, shapes)
    light = skeleton(model)
    macs = node_macs(light, shapes)
    labels = [node_label(n, i) for i, n in enumerate(model.graph.node)]
    types = act.tensor_types(light, shapes)
    acts = act.activation_memory(model, types, VALUE_TYPES[p.dtype].nbytes, labels)
    chosen = select(mac_nodes(model), layers)
    by_name = {n.name: n for n in chosen}
    act_peak, act_peak_node = act.peak_over(acts, [n.name for n in chosen])
    acts_on_chip = p.act_sram_bytes is None or act_peak <= p.act_sram_bytes

    def traffic(names: Sequence[str]) -> tuple[int, int]:
        """(accesses, bytes) of reading the nodes' activation inputs and writing outputs."""
        sizes = [
            acts.tensor_bytes.get(t, 0)
            for n in names
            for t in (*by_name[n].data_inputs, *by_name[n].outputs)
        ]
        return sum(words(b, p.word_bits) for b in sizes), sum(sizes)

    stored, storage_totals, storage_skipped = _store(model, weight_layers(chosen), p)
    placements = place([s.storage for s in stored], p)
    total = Energy()
    count: Counter[str] = Counter()  # MACs dense/effective/computed, bytes moved
    rows = []
    for s, pl in zip(stored, placements, strict=True):
        lm = sum(macs.get(n, 0) for n in s.layer.nodes)
        done = computed_macs(lm, s.storage.slots, s.elements, p.skip_zeros)
        a_words, a_bytes = traffic(s.layer.nodes)
        e = layer_energy(p, done, s.storage.bytes, pl.on_chip, a_words, acts_on_chip)
        total += e
        count.update(dense=lm, effective=_scale(lm, s.nonzero, s.elements), computed=done)
        count.update(act_traffic=a_bytes)
        count["sram_weights" if pl.on_chip else "dram_weights"] += s.storage.bytes
        rows.append(_layer_row(s, pl, lm, done, e))
    weightless = []
    for node in chosen:
        if node.weight is None:
            lm = macs.get(node.name, 0)
            a_words, a_bytes = traffic([node.name])
            e = layer_energy(p, lm, 0, True, a_words, acts_on_chip)
            total += e
            count.update(dense=lm, effective=lm, computed=lm, act_traffic=a_bytes)
            weightless.append(
                {"node": node.name, "op": node.op, "macs": lm, "energy_pj": e.to_json()}
            )

    params_total, params_nonzero = float_params(model)
    weights_total = sum(s.elements for s in stored)
    weights_nonzero = sum(s.nonzero for s in stored)
    acts_dram = 0 if acts_on_chip else count["act_traffic"]
    fit = _fit_summary(stored, placements, p)
    fit["layers"] = rows
    return {
        "accelerator": p.to_json(),
        "input_shapes": {k: list(v) for k, v in shapes.items()},
        "layers_selected": list(layers),
        "params": {
            "total": params_total,
            "nonzero": params_nonzero,
            "weights_total": weights_total,
            "weights_nonzero": weights_nonzero,
            "weights_density": weights_nonzero / weights_total if weights_total else 0.0,
        },
        "storage_bytes": storage_totals,
        "storage_value_dtype": p.dtype,
        "storage_skipped": storage_skipped,
        "macs": {k: count[k] for k in ("dense", "effective", "computed")},
        "activation_peak_bytes": acts.peak_bytes,
        "activations": {
            "peak_bytes": acts.peak_bytes,
            "peak_node": acts.peak_node,
            "peak_bytes_in_selected_layers": act_peak,
            "peak_node_in_selected_layers": act_peak_node,
            "buffer_bytes": p.act_sram_bytes,
            "on_chip": acts_on_chip,
            "traffic_bytes": count["act_traffic"],
            "unknown_shapes": list(acts.unknown),
        },
        "fit": fit,
        "weightless_layers": weightless,
        "dram_bytes_per_inference": count["dram_weights"] + acts_dram,
        "dram_bytes": {"weights": count["dram_weights"], "activations": acts_dram},
        "sram_bytes_per_inference": count["sram_weights"] + count["act_traffic"] - acts_dram,
        "energy_pj": total.to_json(),
        "assumptions": list(ASSUMPTIONS),
    }


def before_after(
    before: onnx.ModelProto,
    after: onnx.ModelProto,
    profile: str | Path | Profile = "generic-45nm",
    input_shapes: Mapping[str, tuple[int, ...]] | None = None,
    *,
    layers: Sequence[str] = (),
) -> dict[str, Any]:
    """A prune report's estimate section: both models on one profile, and what changed."""
    p = load_profile(profile)
    b = estimate(before, p, input_shapes, layers=layers)
    a = estimate(after, p, input_shapes, layers=layers)
    return {"accelerator": p.name, "before": b, "after": a, "change": compare(b, a)}
