"""The format registry and the entry points: encode, decode, parse, analyze, size_bytes.

All of them take the 2-D [rows, cols] view of a weight (see `view`). A blob's size follows
from its header alone, so `analyze` and `size_bytes` compute it from the non-zero pattern
without building a byte of the blob; the tests check that they match `encode` exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from onnxprune.errors import UsageError
from onnxprune.sparse import compressed as cz
from onnxprune.sparse import runlength as rl
from onnxprune.sparse.blob import HEADER, BlobError, Header, Section, read_sections, serialize
from onnxprune.sparse.options import Options, make_options
from onnxprune.sparse.values import BY_CODE, ValueType, dequantize, quantize, value_type


@dataclass(frozen=True)
class Format:
    name: str
    code: int
    description: str
    plan: Callable[[np.ndarray, Options], Header]  # non-zero mask -> header (sizes)
    sections: Callable[[Header, ValueType], list[Section]]
    encode: Callable[[np.ndarray, np.ndarray, Header], dict[str, np.ndarray]]
    decode: Callable[[Header, dict[str, np.ndarray], np.dtype], np.ndarray]


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("dense", 0, "all values, row-major (the baseline)", cz.dense_plan,
               cz.dense_sections, cz.dense_encode, cz.dense_decode),
        Format("csr", 1, "compressed sparse rows", cz.csr_plan, cz.csr_sections,
               cz.csr_encode, cz.csr_decode),
        Format("csc", 2, "compressed sparse columns", cz.csc_plan, cz.csc_sections,
               cz.csc_encode, cz.csc_decode),
        Format("bsr", 3, "block sparse rows (block option)", cz.bsr_plan, cz.bsr_sections,
               cz.bsr_encode, cz.bsr_decode),
        Format("bitmask", 4, "1-bit occupancy mask + packed values", cz.bitmask_plan,
               cz.bitmask_sections, cz.bitmask_encode, cz.bitmask_decode),
        Format("relidx", 5, "Deep Compression relative-index CSR with filler zeros",
               rl.relidx_plan, rl.relidx_sections, rl.relidx_encode, rl.relidx_decode),
        Format("eie", 6, "EIE interleaved CSC over N PEs, 4-bit zero runs, 16-bit pointers",
               rl.eie_plan, rl.eie_sections, rl.eie_encode, rl.eie_decode),
    )
}  # fmt: skip
BY_FORMAT_CODE = {f.code: f for f in FORMATS.values()}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        valid = ", ".join(FORMATS)
        raise UsageError(f"unknown sparse format '{name}'; valid formats: {valid}") from None


@dataclass(frozen=True)
class BlobStats:
    """Exact byte accounting of one blob, and the counts a report needs.

    fillers: zero values the format stores (relidx filler zeros, EIE padding zeros, zeros
    inside BSR blocks, every zero of `dense`; 0 for csr, csc and bitmask).
    """

    fmt: str
    value_dtype: str
    rows: int
    cols: int
    nnz: int
    entries: int
    fillers: int
    header_bytes: int
    index_bytes: int  # pointers, indices, runs, masks: everything but header and values
    value_bytes: int
    total_bytes: int

    @property
    def overhead_bytes(self) -> int:
        """Bytes beyond the non-zero values themselves."""
        return self.total_bytes - self.nnz * value_type(self.value_dtype).nbytes

    def to_json(self) -> dict[str, int | str]:
        return {
            "bytes": self.total_bytes, "nnz": self.nnz, "entries": self.entries,
            "fillers": self.fillers, "header_bytes": self.header_bytes,
            "index_bytes": self.index_bytes, "value_bytes": self.value_bytes,
        }  # fmt: skip


@dataclass(frozen=True)
class ParsedBlob:
    """A blob read back: its header fields and each section as a numpy array."""

    fmt: str
    value_dtype: str
    header: Header
    arrays: dict[str, np.ndarray]


def _as_matrix(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix)
    if matrix.ndim != 2:
        raise UsageError(
            f"sparse formats encode 2-D [out, in] matrices, got shape {list(matrix.shape)}; "
            "use onnxprune.sparse.to_matrix first"
        )
    if max(matrix.shape) >= 1 << 32:
        raise UsageError(f"matrix {list(matrix.shape)} is too large for 32-bit dimensions")
    return matrix


def _prepare(matrix, fmt, value_dtype, opts):
    f, vt = get_format(fmt), value_type(value_dtype)
    codes, scale = quantize(_as_matrix(matrix), value_dtype)
    mask = codes != 0
    header = replace(f.plan(mask, opts), fmt_code=f.code, dtype_code=vt.code, scale=scale)
    return f, vt, codes, mask, header


def _stats(f: Format, vt: ValueType, h: Header) -> BlobStats:
    sections = f.sections(h, vt)
    values = sum(s.nbytes for s in sections if s.name == "values")
    index = sum(s.nbytes for s in sections if s.name != "values")
    slots = sum(s.count for s in sections if s.name == "values")
    total = HEADER.size + index + values
    return BlobStats(
        f.name, vt.name, h.rows, h.cols, h.nnz, h.entries, slots - h.nnz,
        HEADER.size, index, values, total,
    )  # fmt: skip


def analyze(
    matrix: np.ndarray, fmt: str, value_dtype: str = "fp32", **options: object
) -> BlobStats:
    """Byte accounting of `encode(matrix, fmt, ...)` without building the blob."""
    f, vt, _, _, header = _prepare(matrix, fmt, value_dtype, make_options(**options))
    return _stats(f, vt, header)


def size_bytes(matrix: np.ndarray, fmt: str, value_dtype: str = "fp32", **options: object) -> int:
    """Exact size of the blob `encode` would produce."""
    return analyze(matrix, fmt, value_dtype, **options).total_bytes


def encode(matrix: np.ndarray, fmt: str, value_dtype: str = "fp32", **options: object) -> bytes:
    """The blob of a 2-D matrix. options: index_bits, block, n_pe, run_bits (see Options)."""
    return encode_with_stats(matrix, fmt, value_dtype, make_options(**options))[0]


def encode_with_stats(
    matrix: np.ndarray, fmt: str, value_dtype: str = "fp32", options: Options | None = None
) -> tuple[bytes, BlobStats]:
    """The blob and its byte accounting, quantizing and planning once."""
    f, vt, codes, mask, header = _prepare(matrix, fmt, value_dtype, options or Options())
    sections = f.sections(header, vt)
    blob = serialize(header, sections, f.encode(codes, mask, header))
    return blob, _stats(f, vt, header)


def parse(blob: bytes) -> ParsedBlob:
    """Header and section arrays of a blob (packed runs and masks unpacked to integers)."""
    blob = bytes(blob)
    header = Header.unpack(blob)
    f = BY_FORMAT_CODE.get(header.fmt_code)
    vt = BY_CODE.get(header.dtype_code)
    if f is None or vt is None:
        raise BlobError(
            f"sparse blob has unknown format code {header.fmt_code} or value dtype code "
            f"{header.dtype_code}"
        )
    return ParsedBlob(f.name, vt.name, header, read_sections(blob, f.sections(header, vt)))


def decode_codes(blob: bytes) -> tuple[np.ndarray, str, float]:
    """(dense codes, value dtype, scale): the stored values before dequantization."""
    parsed = parse(blob)
    vt = value_type(parsed.value_dtype)
    codes = FORMATS[parsed.fmt].decode(parsed.header, parsed.arrays, vt.code_dtype)
    if int(np.count_nonzero(codes)) != parsed.header.nnz:
        raise BlobError("sparse blob decodes to a different number of non-zeros than declared")
    return codes, vt.name, parsed.header.scale


def decode(blob: bytes) -> np.ndarray:
    """The float32 [rows, cols] matrix of a blob: bit-exact for fp32, dequantized otherwise."""
    codes, value_dtype, scale = decode_codes(blob)
    return dequantize(codes, value_dtype, scale)
