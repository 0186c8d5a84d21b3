"""Energy per inference: arithmetic + SRAM accesses + DRAM accesses, with stated constants.

The model (Han et al. 2015's argument, made per layer):

- arithmetic: MACs x pJ per MAC of the profile's dtype. An engine that skips zeros
  multiplies only the values its format stores (non-zeros plus the format's filler or
  padding zeros); a dense engine does every MAC.
- weights: every stored weight byte is read once per inference from where it lives,
  in `word_bits` accesses: SRAM for layers on chip, DRAM for the others (the SRAM hop a
  streamed weight takes on its way in is not counted).
- activations: each MAC layer reads its activation inputs once and writes its outputs
  once (perfect reuse inside the PE array), from SRAM when the activations fit on chip,
  from DRAM otherwise.

Not modelled: partial sums, register files and the on-chip network, control, leakage,
DRAM page effects, the size dependence of SRAM energy (Horowitz: 5 pJ per 32 bits is an
8 KB array; a 1 MB array costs ~10x more), tiling that re-reads weights or activations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from onnxprune.estimate.profiles import Profile


def words(nbytes: int, word_bits: int) -> int:
    """Accesses needed to move `nbytes` through a `word_bits`-wide port."""
    return math.ceil(nbytes * 8 / word_bits)


@dataclass(frozen=True)
class Energy:
    arithmetic: float = 0.0
    sram: float = 0.0
    dram: float = 0.0

    @property
    def total(self) -> float:
        return self.arithmetic + self.sram + self.dram

    def __add__(self, other: Energy) -> Energy:
        return Energy(
            self.arithmetic + other.arithmetic, self.sram + other.sram, self.dram + other.dram
        )

    def to_json(self) -> dict[str, float]:
        return {
            "arithmetic": self.arithmetic,
            "sram": self.sram,
            "dram": self.dram,
            "total": self.total,
        }


def layer_energy(
    p: Profile,
    macs: int,
    weight_bytes: int,
    weights_on_chip: bool,
    act_accesses: int,
    acts_on_chip: bool,
) -> Energy:
    """Energy of one layer: `macs` computed, its weights read once, `act_accesses` words."""
    weight_pj = words(weight_bytes, p.word_bits) * (
        p.pj_sram_access if weights_on_chip else p.pj_dram_access
    )
    act_pj = act_accesses * (p.pj_sram_access if acts_on_chip else p.pj_dram_access)
    return Energy(
        arithmetic=macs * p.mac_pj,
        sram=(weight_pj if weights_on_chip else 0.0) + (act_pj if acts_on_chip else 0.0),
        dram=(0.0 if weights_on_chip else weight_pj) + (0.0 if acts_on_chip else act_pj),
    )


def computed_macs(macs: int, slots: int, elements: int, skip_zeros: bool) -> int:
    """MACs the engine performs: all of them, or those of the stored values when it skips."""
    if not skip_zeros or elements == 0:
        return macs
    return (macs * slots + elements // 2) // elements
