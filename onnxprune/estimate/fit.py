"""Which layers' weights live on chip: first fit in graph order.

Layers are placed in the order the graph runs them; a layer goes on chip when it fits
in what is left (in every PE's slice of the weight SRAM, in the pointer SRAM, and, for
EIE, within 16-bit pointer range); otherwise it streams from DRAM and later, smaller
layers may still fit. The policy is simple, deterministic and easy to check by hand,
and all weights fit exactly when their total fits (per PE), so `on_chip` answers the
yes/no question whatever the policy. It is not optimal: when not all fit, a knapsack
choice (or largest-first) could keep more bytes on chip; the report names the policy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.estimate.profiles import Profile
from onnxprune.estimate.storage import LayerStorage

POLICY = "first fit in graph order"


@dataclass(frozen=True)
class Placement:
    on_chip: bool
    reason: str  # why a layer streams from DRAM ("" when on chip)


def place(layers: Sequence[LayerStorage], p: Profile) -> list[Placement]:
    used = np.zeros(p.n_pe, dtype=np.int64)
    pointer_used = 0
    pointer_cap = None if p.pointer_sram_bytes is None else p.pointer_sram_bytes // p.n_pe
    limit = (1 << p.pointer_bits) - 1
    result = []
    for layer in layers:
        free = p.bank_bytes - used
        if layer.format == "eie" and layer.max_pe_entries > limit:
            reason = (
                f"{layer.max_pe_entries} entries on one PE exceed what {p.pointer_bits}-bit "
                f"column pointers address ({limit})"
            )
        elif (layer.bank_bytes > free).any():
            worst = int(np.argmax(layer.bank_bytes - free))
            where = f" of PE {worst}" if p.n_pe > 1 else ""
            reason = (
                f"needs {int(layer.bank_bytes[worst])} B of the {int(free[worst])} B left in "
                f"the weight SRAM{where}"
            )
        elif pointer_cap is not None and pointer_used + layer.pointer_bytes > pointer_cap:
            reason = (
                f"needs {layer.pointer_bytes} B of pointers per PE, "
                f"{pointer_cap - pointer_used} B left of {pointer_cap}"
            )
        else:
            used += layer.bank_bytes
            pointer_used += layer.pointer_bytes
            result.append(Placement(True, ""))
            continue
        result.append(Placement(False, reason))
    return result
