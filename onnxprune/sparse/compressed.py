"""Dense, CSR, CSC, BSR and bitmask layouts (sections after the common header).

    dense    values[rows*cols]                                        row-major
    csr      indptr u32[rows+1] · indices uX[nnz] (column) · values[nnz]
    csc      indptr u32[cols+1] · indices uX[nnz] (row) · values[nnz]
    bsr      indptr u32[rows/br+1] · indices uX[blocks] (block column)
             · values[blocks*br*bc] (each block row-major; blocks in row-major order)
    bitmask  mask: rows*cols 1-bit flags, LSB-first, row-major · values[nnz] row-major

uX is u16 when the indexed dimension is at most 65536, else u32 (header byte 7 says which).
Each function works on *codes* (see `values`) and a keep-mask of non-zero codes.
"""

from __future__ import annotations

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.sparse.blob import BlobError, Header, Section
from onnxprune.sparse.options import Options
from onnxprune.sparse.values import ValueType

U32 = np.dtype("<u4")


class BlockShapeError(UsageError, ValueError):
    """The BSR block shape does not divide the matrix."""


def index_bytes(dim: int) -> int:
    return 2 if dim <= 1 << 16 else 4


def _index_dtype(nbytes: int) -> np.dtype:
    if nbytes not in (2, 4):
        raise BlobError(f"sparse blob declares {nbytes}-byte indices; only 2 or 4 are valid")
    return np.dtype(f"<u{nbytes}")


def _pointers(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])


def _expand(indptr: np.ndarray, indices: np.ndarray, outer: int, inner: int) -> np.ndarray:
    """Outer coordinate of each entry of a compressed (indptr, indices) pair, validated."""
    indptr = indptr.astype(np.int64)
    counts = np.diff(indptr)
    if indptr[0] != 0 or indptr[-1] != len(indices) or (counts < 0).any():
        raise BlobError("sparse blob has inconsistent pointers")
    if len(indices) and int(indices.max()) >= inner:
        raise BlobError("sparse blob has an index outside the matrix")
    return np.repeat(np.arange(outer), counts)


# dense ---------------------------------------------------------------------------------


def dense_plan(mask: np.ndarray, opts: Options) -> Header:
    rows, cols = mask.shape
    return Header(0, 0, rows, cols, int(mask.sum()), rows * cols)


def dense_sections(h: Header, vt: ValueType) -> list[Section]:
    return [Section("values", h.rows * h.cols, vt.code_dtype)]


def dense_encode(codes: np.ndarray, mask: np.ndarray, h: Header) -> dict[str, np.ndarray]:
    return {"values": codes.ravel()}


def dense_decode(h: Header, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    return arrays["values"].astype(dtype).reshape(h.rows, h.cols)


# csr / csc -----------------------------------------------------------------------------


def csr_plan(mask: np.ndarray, opts: Options) -> Header:
    rows, cols = mask.shape
    nnz = int(mask.sum())
    return Header(0, 0, rows, cols, nnz, nnz, aux=index_bytes(cols))


def csr_sections(h: Header, vt: ValueType) -> list[Section]:
    return [
        Section("indptr", h.rows + 1, U32),
        Section("indices", h.nnz, _index_dtype(h.aux)),
        Section("values", h.nnz, vt.code_dtype),
    ]


def csr_encode(codes: np.ndarray, mask: np.ndarray, h: Header) -> dict[str, np.ndarray]:
    r, c = np.nonzero(mask)
    indptr = _pointers(np.bincount(r, minlength=h.rows))
    return {"indptr": indptr, "indices": c, "values": codes[r, c]}


def csr_decode(h: Header, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    r = _expand(arrays["indptr"], arrays["indices"], h.rows, h.cols)
    out = np.zeros((h.rows, h.cols), dtype=dtype)
    out[r, arrays["indices"]] = arrays["values"]
    return out


def csc_plan(mask: np.ndarray, opts: Options) -> Header:
    rows, cols = mask.shape
    nnz = int(mask.sum())
    return Header(0, 0, rows, cols, nnz, nnz, aux=index_bytes(rows))


def csc_sections(h: Header, vt: ValueType) -> list[Section]:
    return [
        Section("indptr", h.cols + 1, U32),
        Section("indices", h.nnz, _index_dtype(h.aux)),
        Section("values", h.nnz, vt.code_dtype),
    ]


def csc_encode(codes: np.ndarray, mask: np.ndarray, h: Header) -> dict[str, np.ndarray]:
    c, r = np.nonzero(mask.T)
    indptr = _pointers(np.bincount(c, minlength=h.cols))
    return {"indptr": indptr, "indices": r, "values": codes[r, c]}


def csc_decode(h: Header, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    c = _expand(arrays["indptr"], arrays["indices"], h.cols, h.rows)
    out = np.zeros((h.rows, h.cols), dtype=dtype)
    out[arrays["indices"], c] = arrays["values"]
    return out


# bsr -----------------------------------------------------------------------------------


def check_block(shape: tuple[int, int], block: tuple[int, int]) -> tuple[int, int]:
    br, bc = (int(b) for b in block)
    if br < 1 or bc < 1:
        raise BlockShapeError(f"BSR block shape must be positive, got {br}x{bc}")
    rows, cols = shape
    if rows % br or cols % bc:
        raise BlockShapeError(
            f"BSR block {br}x{bc} does not divide the {rows}x{cols} weight matrix; "
            "choose a block whose sides divide both dimensions"
        )
    return br, bc


def _blocks(a: np.ndarray, br: int, bc: int) -> np.ndarray:
    rows, cols = a.shape
    return a.reshape(rows // br, br, cols // bc, bc).swapaxes(1, 2)  # [R, C, br, bc]


def bsr_plan(mask: np.ndarray, opts: Options) -> Header:
    br, bc = check_block(mask.shape, opts.block)
    rows, cols = mask.shape
    nblocks = int(_blocks(mask, br, bc).any(axis=(2, 3)).sum())
    return Header(
        0, 0, rows, cols, int(mask.sum()), nblocks, aux=index_bytes(cols // bc), p0=br, p1=bc
    )


def bsr_sections(h: Header, vt: ValueType) -> list[Section]:
    if h.p0 < 1 or h.p1 < 1 or h.rows % h.p0 or h.cols % h.p1:
        raise BlobError("BSR blob has a block shape that does not divide its matrix")
    return [
        Section("indptr", h.rows // h.p0 + 1, U32),
        Section("indices", h.entries, _index_dtype(h.aux)),
        Section("values", h.entries * h.p0 * h.p1, vt.code_dtype),
    ]


def bsr_encode(codes: np.ndarray, mask: np.ndarray, h: Header) -> dict[str, np.ndarray]:
    br, bc = h.p0, h.p1
    bi, bj = np.nonzero(_blocks(mask, br, bc).any(axis=(2, 3)))
    indptr = _pointers(np.bincount(bi, minlength=h.rows // br))
    return {"indptr": indptr, "indices": bj, "values": _blocks(codes, br, bc)[bi, bj]}


def bsr_decode(h: Header, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    br, bc = h.p0, h.p1
    bi = _expand(arrays["indptr"], arrays["indices"], h.rows // br, h.cols // bc)
    out = np.zeros((h.rows, h.cols), dtype=dtype)
    _blocks(out, br, bc)[bi, arrays["indices"]] = arrays["values"].reshape(-1, br, bc)
    return out


# bitmask -------------------------------------------------------------------------------


def bitmask_plan(mask: np.ndarray, opts: Options) -> Header:
    rows, cols = mask.shape
    nnz = int(mask.sum())
    return Header(0, 0, rows, cols, nnz, nnz)


def bitmask_sections(h: Header, vt: ValueType) -> list[Section]:
    return [Section("mask", h.rows * h.cols, bits=1), Section("values", h.nnz, vt.code_dtype)]


def bitmask_encode(codes: np.ndarray, mask: np.ndarray, h: Header) -> dict[str, np.ndarray]:
    return {"mask": mask.ravel(), "values": codes[mask]}


def bitmask_decode(h: Header, arrays: dict[str, np.ndarray], dtype: np.dtype) -> np.ndarray:
    mask = arrays["mask"].astype(bool).reshape(h.rows, h.cols)
    if int(mask.sum()) != h.nnz:
        raise BlobError("bitmask blob: the mask does not match the number of values")
    out = np.zeros((h.rows, h.cols), dtype=dtype)
    out[mask] = arrays["values"]
    return out
