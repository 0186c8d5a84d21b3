"""Encoding options of the sparse formats, validated once."""

from __future__ import annotations

import numbers
from dataclasses import dataclass

from onnxprune.errors import UsageError

# Deep Compression's relative-index widths: 4 bits for conv layers, 5 for fully connected.
DEFAULT_INDEX_BITS = {"conv": 4, "fc": 5}
MAX_FIELD_BITS = 16


@dataclass(frozen=True)
class Options:
    """index_bits: relidx run field; block: BSR (rows, cols); n_pe/run_bits: EIE."""

    index_bits: int = 4
    block: tuple[int, int] = (4, 1)
    n_pe: int = 64
    run_bits: int = 4

    def __post_init__(self) -> None:
        for name in ("index_bits", "run_bits"):
            value = getattr(self, name)
            if not _is_int(value) or not 1 <= value <= MAX_FIELD_BITS:
                raise UsageError(f"{name} must be an integer in 1..{MAX_FIELD_BITS}, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not _is_int(self.n_pe) or not 1 <= self.n_pe <= 1 << 16:
            raise UsageError(f"n_pe must be an integer in 1..65536, got {self.n_pe!r}")
        object.__setattr__(self, "n_pe", int(self.n_pe))
        block = tuple(self.block)
        if len(block) != 2 or not all(_is_int(b) and b >= 1 for b in block):
            raise UsageError(f"BSR block must be two positive integers, got {self.block!r}")
        object.__setattr__(self, "block", (int(block[0]), int(block[1])))


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def make_options(**options: object) -> Options:
    """Options from keyword arguments, naming the valid ones when a keyword is unknown."""
    valid = tuple(Options.__dataclass_fields__)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UsageError(f"unknown sparse option(s) {unknown}; valid options: {', '.join(valid)}")
    return Options(**options)  # type: ignore[arg-type]
