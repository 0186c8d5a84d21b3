"""Weight storage: blob sizes in every format, and the bytes a layer takes on a given chip.

Two different questions, two different numbers:

- `blob_sizes`: the exact size of the blob `onnxprune.sparse.write_blobs` writes for a
  tensor (36-byte header included), per format, computed by the same encoders without
  writing anything. These are the report's `storage_bytes`.
- `layer_storage`: what a layer occupies in the accelerator's SRAM under its profile:
  no file header, values `value_bits` wide (EIE stores a 4-bit codebook index), in the
  profile's sparse format or dense, whichever is smaller (unless the chip only reads its
  sparse format). For EIE the interleaved layout gives every PE its own share, which is
  what has to fit in that PE's SRAM.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.estimate.profiles import Profile
from onnxprune.sparse import DEFAULT_INDEX_BITS, FORMATS, BlobStats, analyze, quantize
from onnxprune.sparse.bits import fillers_for, zero_runs
from onnxprune.sparse.runlength import EIE_MAX_ENTRIES

DENSE_DTYPES = ("fp32", "fp16", "int8")
# write_blobs' defaults: the blobs a prune run writes unless told otherwise.
BLOB_OPTIONS = {"block": (4, 1), "n_pe": 64, "run_bits": 4}
STORAGE_KEYS = (*(f"dense_{dt}" for dt in DENSE_DTYPES), *FORMATS)


def _family(kind: str) -> str:
    return "conv" if kind == "conv" else "fc"


def blob_sizes(matrix: np.ndarray, kind: str, dtype: str) -> dict[str, int | str]:
    """{key: bytes or the reason the format cannot hold it}: `dense_<dt>` for each value
    dtype, and every sparse format with `dtype` values, with write_blobs' default options."""
    opts = dict(BLOB_OPTIONS, index_bits=DEFAULT_INDEX_BITS[_family(kind)])
    sizes: dict[str, int | str] = {}
    for dt in DENSE_DTYPES:
        sizes[f"dense_{dt}"] = analyze(matrix, "dense", dt).total_bytes
    nnz = int(np.count_nonzero(quantize(matrix, dtype)[0]))
    for fmt in FORMATS:
        if fmt == "eie" and -(-nnz // opts["n_pe"]) > EIE_MAX_ENTRIES:
            # Some PE holds at least the average: the encoder would refuse after sorting.
            sizes[fmt] = (
                f"EIE: a PE would hold at least {-(-nnz // opts['n_pe'])} entries, more than "
                f"16-bit column pointers address ({EIE_MAX_ENTRIES})"
            )
            continue
        try:
            sizes[fmt] = analyze(matrix, fmt, dtype, **opts).total_bytes
        except UsageError as exc:  # BSR block not dividing, EIE pointer overflow
            sizes[fmt] = str(exc)
    return sizes


def eie_pe_entries(mask: np.ndarray, n_pe: int, run_bits: int) -> np.ndarray:
    """Stored entries (non-zeros + padding zeros) of each PE in EIE's interleaved CSC.

    Row i lives on PE i % n_pe as local row i // n_pe; within a column each entry records
    the zeros skipped since the previous one, and a gap longer than 2**run_bits - 1 costs
    padding zeros: the layout of `sparse.runlength`, counted per PE (one PE at a time, so
    memory stays bounded) and without refusing PEs beyond 16-bit pointer range, which the
    fit check reports instead.
    """
    rows, cols = mask.shape
    local_rows = -(-rows // n_pe)
    padded = np.zeros((local_rows * n_pe, cols), dtype=bool)
    padded[:rows] = mask
    cube = padded.reshape(local_rows, n_pe, cols)  # [local row, PE, column]
    entries = np.zeros(n_pe, dtype=np.int64)
    for k in range(n_pe):
        flat = np.flatnonzero(np.ascontiguousarray(cube[:, k, :].T))  # column-major per PE
        column, local = np.divmod(flat, local_rows)
        entries[k] = len(flat) + int(fillers_for(zero_runs(local, column), run_bits).sum())
    return entries


@dataclass(frozen=True)
class LayerStorage:
    """A layer's footprint on the chip.

    bank_bytes: bytes in each PE's weight SRAM (one entry when n_pe = 1); pointer_bytes:
    bytes per PE in the separate pointer SRAM (EIE); slots: values stored, zeros that the
    format keeps (fillers, dense zeros) included: what a zero-skipping engine multiplies.
    """

    format: str
    bytes: int
    slots: int
    nnz: int
    bank_bytes: np.ndarray
    pointer_bytes: int = 0
    max_pe_entries: int = 0
    note: str = ""
    details: dict[str, int] = field(default_factory=dict)


def _even_split(total: int, banks: int) -> np.ndarray:
    base, rest = divmod(total, banks)
    return np.full(banks, base, dtype=np.int64) + (np.arange(banks) < rest)


def _from_stats(stats: BlobStats, value_bits: int) -> tuple[int, int]:
    slots = stats.nnz + stats.fillers
    return stats.index_bytes + math.ceil(slots * value_bits / 8), slots


def _eie(codes_mask: np.ndarray, p: Profile) -> LayerStorage:
    entries = eie_pe_entries(codes_mask, p.n_pe, p.run_bits)
    bank = (entries * (p.bits_per_value + p.run_bits) + 7) // 8
    pointers = math.ceil((codes_mask.shape[1] + 1) * p.pointer_bits / 8)
    shared = p.pointer_sram_bytes is None
    if shared:
        bank = bank + pointers
    total = int(bank.sum()) + (0 if shared else pointers * p.n_pe)
    return LayerStorage(
        "eie", total, int(entries.sum()), int(codes_mask.sum()), bank,
        pointer_bytes=0 if shared else pointers, max_pe_entries=int(entries.max()),
        details={"pointer_bytes_per_pe": pointers},
    )  # fmt: skip


def layer_storage(matrix: np.ndarray, kind: str, p: Profile) -> LayerStorage:
    """Footprint of the 2-D weight `matrix` under profile `p` (format chosen as documented)."""
    opts = {
        "index_bits": p.index_bits or DEFAULT_INDEX_BITS[_family(kind)],
        "block": p.block,
        "n_pe": p.n_pe,
        "run_bits": p.run_bits,
    }
    candidates = [p.sparse_format]
    if p.dense_fallback and p.sparse_format != "dense":
        candidates.insert(0, "dense")  # first: wins ties
    best: LayerStorage | None = None
    note = ""
    for fmt in candidates:
        if fmt == "eie":
            mask = quantize(matrix, p.dtype)[0] != 0
            option = _eie(mask, p)
        else:
            try:
                stats = analyze(matrix, fmt, p.dtype, **opts)
            except UsageError as exc:
                note = f"{fmt} cannot hold this weight ({exc})"
                continue
            size, slots = _from_stats(stats, p.bits_per_value)
            option = LayerStorage(fmt, size, slots, stats.nnz, _even_split(size, p.n_pe))
        if best is None or option.bytes < best.bytes:
            best = option
    if best is None:  # the only format cannot hold it: count it dense, say so
        stats = analyze(matrix, "dense", p.dtype)
        size, slots = _from_stats(stats, p.bits_per_value)
        best = LayerStorage("dense", size, slots, stats.nnz, _even_split(size, p.n_pe))
    if note and best.format == "dense":
        best = LayerStorage(**{**best.__dict__, "note": note})
    return best
