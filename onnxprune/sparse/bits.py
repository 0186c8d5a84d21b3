"""Bit packing and zero-run coding shared by the relative-index and EIE formats.

Packed fields are LSB-first: entry k of a `bits`-wide stream occupies stream bits
[k*bits, (k+1)*bits), its least significant bit first, and stream bit j is bit (j % 8) of
byte j // 8. This is what `np.packbits(..., bitorder="little")` produces.

Zero-run coding: within a group (the whole matrix, or one column of one PE), each stored
entry carries the number of zeros skipped since the previous entry (or the group start).
A run longer than the field can hold (2**bits - 1) is split by *filler* entries: a filler
has run = 2**bits - 1 and value 0, and stands for 2**bits positions (the run it carries plus
the zero it stores). A gap of g zeros therefore costs g >> bits fillers.
"""

from __future__ import annotations

import numpy as np


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """uint8 buffer of ceil(len(values) * bits / 8) bytes."""
    if bits == 1:
        return np.packbits(np.asarray(values).astype(bool), bitorder="little")
    v = np.asarray(values, dtype=np.uint32)
    planes = (v[:, None] >> np.arange(bits, dtype=np.uint32)) & 1
    return np.packbits(planes.astype(np.uint8).ravel(), bitorder="little")


def unpack_bits(buffer: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The `count` unsigned `bits`-wide integers of a packed buffer (int64; uint8 for 1 bit)."""
    flat = np.unpackbits(np.asarray(buffer, dtype=np.uint8), count=count * bits, bitorder="little")
    if bits == 1:
        return flat  # uint8 0/1 flags
    weights = np.left_shift(np.int64(1), np.arange(bits, dtype=np.int64))
    return flat.reshape(count, bits).astype(np.int64) @ weights


def packed_nbytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def zero_runs(positions: np.ndarray, group: np.ndarray | None = None) -> np.ndarray:
    """Zeros skipped before each sorted position since the previous one in its group."""
    positions = np.asarray(positions, dtype=np.int64)
    prev = np.empty_like(positions)
    prev[:1] = -1
    prev[1:] = positions[:-1]
    if group is not None and len(positions):
        starts = np.ones(len(positions), dtype=bool)
        starts[1:] = group[1:] != group[:-1]
        prev[starts] = -1
    return positions - prev - 1


def fillers_for(runs: np.ndarray, bits: int) -> np.ndarray:
    """Filler entries needed before each entry whose zero run is `runs`."""
    return np.right_shift(np.asarray(runs, dtype=np.int64), bits)


def entry_stream(
    runs: np.ndarray, codes: np.ndarray, bits: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(entry runs, entry codes, slot of each nonzero) with fillers inserted before entries."""
    fill = fillers_for(runs, bits)
    slots = np.arange(len(runs), dtype=np.int64) + np.cumsum(fill)
    total = len(runs) + int(fill.sum())
    entry_runs = np.full(total, (1 << bits) - 1, dtype=np.int64)
    entry_runs[slots] = runs - np.left_shift(fill, bits)
    entry_codes = np.zeros(total, dtype=codes.dtype)
    entry_codes[slots] = codes
    return entry_runs, entry_codes, slots


def run_positions(entry_runs: np.ndarray, group_counts: np.ndarray | None = None) -> np.ndarray:
    """Position of each entry within its group (inverse of `zero_runs` + fillers)."""
    ends = np.cumsum(np.asarray(entry_runs, dtype=np.int64) + 1)
    if group_counts is None:
        return ends - 1
    counts = np.asarray(group_counts, dtype=np.int64)
    first = np.cumsum(counts) - counts
    base = np.zeros(len(counts), dtype=np.int64)
    nonempty = (counts > 0) & (first > 0)
    base[nonempty] = ends[first[nonempty] - 1]
    return ends - np.repeat(base, counts) - 1
