"""Zero-run coded layouts: Deep Compression relative-index CSR and EIE interleaved CSC.

relidx (Han et al., ICLR 2016): the matrix is one row-major stream; row boundaries do NOT
reset the run, so no row pointers are stored. Each entry holds the number of zeros since
the previous entry (`index_bits` wide) and a value; runs longer than 2**bits - 1 get
filler zeros (see `bits`). Sections:

    runs: entries x index_bits, packed · values[entries]

Size = 36 + ceil(E*b/8) + E*value_bytes with E = nnz + fillers.

eie (Han et al., ISCA 2016): row i lives on processing element i % N, as local row i // N.
Each PE stores its columns in order; within a column, entries of (zero run, value) where
the run counts the PE's local rows skipped since the previous entry of that column
(reset at every column), with padding zeros when a run exceeds 2**run_bits - 1. Sections:

    colptr: u16[N, cols+1], PE-major; colptr[k, j] = start of column j in PE k's entries
    runs:   entries x run_bits, packed, all PEs concatenated in PE order
    values: [entries], same order

A PE holding more than 65535 entries cannot be addressed by 16-bit pointers and is refused.
"""

from __future__ import annotations

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.sparse.bits import entry_stream, fillers_for, run_positions, zero_runs
from onnxprune.sparse.blob import BlobError, Header, Section
from onnxprune.sparse.options import Options
from onnxprune.sparse.values import ValueType

U16 = np.dtype("<u2")
EIE_MAX_ENTRIES = (1 << 16) - 1


class EIEPointerError(UsageError, ValueError):
    """A PE holds more entries than 16-bit column pointers can address."""


# relidx --------------------------------------------------------------------------------


def relidx_plan(mask: np.ndarray, opts: Options) -> Header:
    rows, cols = mask.shape
    runs = zero_runs(np.flatnonzero(mask))
    fillers = int(fillers_for(runs, opts.index_bits).sum())
    return Header(0, 0, rows, cols, len(runs), len(runs) + fillers, aux=opts.index_bits)


def relidx_sections(h: Header, vt: ValueType) -> list[Section]:
    _check_bits(h.aux)
    return [Section("runs", h.entries, bits=h.aux), Section("values", h.entries, vt.code_dtype)]


def relidx_encode(codes: np.ndarray, mask: np.ndarray, h: Header) -> dict[str, np.ndarray]:
    positions = np.flatnonzero(mask)
    runs, values, _ = entry_stream(zero_runs(positions), codes.ravel()[positions], h.aux)
    return {"runs": runs, "values": values}


def relidx_decode(h: Header, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    positions = run_positions(arrays["runs"])
    if len(positions) and positions[-1] >= h.rows * h.cols:
        raise BlobError("relidx blob runs past the end of its matrix")
    out = np.zeros(h.rows * h.cols, dtype=dtype)
    out[positions] = arrays["values"]
    return out.reshape(h.rows, h.cols)


# eie -----------------------------------------------------------------------------------


def _eie_layout(mask: np.ndarray, n_pe: int, bits: int):
    """Nonzeros in stream order (PE, column, local row), their runs, and entries per group."""
    cols = mask.shape[1]
    i, j = np.nonzero(mask)
    pe, local = i % n_pe, i // n_pe
    order = np.lexsort((local, j, pe))
    group = (pe * cols + j)[order]
    runs = zero_runs(local[order], group)
    counts = np.bincount(group, minlength=n_pe * cols) + np.bincount(
        group, weights=fillers_for(runs, bits), minlength=n_pe * cols
    ).astype(np.int64)
    per_pe = counts.reshape(n_pe, cols).sum(axis=1)
    if len(per_pe) and per_pe.max() > EIE_MAX_ENTRIES:
        raise EIEPointerError(
            f"EIE: a PE would hold {int(per_pe.max())} entries, more than 16-bit column "
            f"pointers address ({EIE_MAX_ENTRIES}); use more PEs (n_pe) or prune further"
        )
    return (i[order], j[order]), runs, counts


def eie_plan(mask: np.ndarray, opts: Options) -> Header:
    rows, cols = mask.shape
    _, _, counts = _eie_layout(mask, opts.n_pe, opts.run_bits)
    nnz = int(mask.sum())
    return Header(0, 0, rows, cols, nnz, int(counts.sum()), aux=opts.run_bits, p0=opts.n_pe)


def eie_sections(h: Header, vt: ValueType) -> list[Section]:
    _check_bits(h.aux)
    if h.p0 < 1:
        raise BlobError("EIE blob declares no processing elements")
    return [
        Section("colptr", h.p0 * (h.cols + 1), U16),
        Section("runs", h.entries, bits=h.aux),
        Section("values", h.entries, vt.code_dtype),
    ]


def eie_encode(codes: np.ndarray, mask: np.ndarray, h: Header) -> dict[str, np.ndarray]:
    (i, j), runs, counts = _eie_layout(mask, h.p0, h.aux)
    entry_runs, values, _ = entry_stream(runs, codes[i, j], h.aux)
    per_column = counts.reshape(h.p0, h.cols)
    colptr = np.zeros((h.p0, h.cols + 1), dtype=np.int64)
    np.cumsum(per_column, axis=1, out=colptr[:, 1:])
    return {"colptr": colptr, "runs": entry_runs, "values": values}


def eie_decode(h: Header, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    n_pe, cols = h.p0, h.cols
    colptr = arrays["colptr"].astype(np.int64).reshape(n_pe, cols + 1)
    counts = np.diff(colptr, axis=1)
    if (colptr[:, 0] != 0).any() or (counts < 0).any() or counts.sum() != h.entries:
        raise BlobError("EIE blob has inconsistent column pointers")
    counts = counts.ravel()
    local = run_positions(arrays["runs"], counts)
    group = np.repeat(np.arange(n_pe * cols), counts)
    rows = local * n_pe + group // cols
    if len(rows) and rows.max() >= h.rows:
        raise BlobError("EIE blob runs past the end of a column")
    out = np.zeros((h.rows, cols), dtype=dtype)
    out[rows, group % cols] = arrays["values"]
    return out


def _check_bits(bits: int) -> None:
    if not 1 <= bits <= 16:
        raise BlobError(f"sparse blob declares {bits}-bit runs; valid widths are 1..16")
