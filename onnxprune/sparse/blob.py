"""The container every blob shares: a fixed 36-byte header, then the format's sections.

Header (little-endian, `HEADER` below):

    offset size  field
    0      4     magic b"OXSB"
    4      1     layout version (1)
    5      1     format code (dense 0, csr 1, csc 2, bsr 3, bitmask 4, relidx 5, eie 6)
    6      1     value dtype code (fp32 0, fp16 1, int8 2)
    7      1     aux: index bytes (csr/csc/bsr), index bits (relidx), run bits (eie), else 0
    8      4     rows (u32)
    12     4     cols (u32)
    16     4     nnz: non-zero values stored (u32)
    20     4     entries: stored entries incl. fillers (relidx/eie), blocks (bsr), else nnz
    24     4     scale (f32): int8 dequantization scale, 1.0 otherwise
    28     4     p0 (u32): block rows (bsr), processing elements (eie), else 0
    32     4     p1 (u32): block cols (bsr), else 0

Sections follow back to back with no padding: fixed-width little-endian arrays, or
LSB-first packed bit fields (see `bits`). Their order and lengths follow from the header
alone, so the blob size is known before anything is encoded.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from onnxprune.errors import ModelError
from onnxprune.sparse.bits import pack_bits, packed_nbytes, unpack_bits

MAGIC = b"OXSB"
VERSION = 1
HEADER = struct.Struct("<4sBBBBIIIIfII")


class BlobError(ModelError):
    """A sparse blob or its manifest is unreadable, truncated or inconsistent."""


@dataclass(frozen=True)
class Header:
    fmt_code: int
    dtype_code: int
    rows: int
    cols: int
    nnz: int
    entries: int
    aux: int = 0
    scale: float = 1.0
    p0: int = 0
    p1: int = 0

    def pack(self) -> bytes:
        return HEADER.pack(
            MAGIC, VERSION, self.fmt_code, self.dtype_code, self.aux,
            self.rows, self.cols, self.nnz, self.entries, self.scale, self.p0, self.p1,
        )  # fmt: skip

    @classmethod
    def unpack(cls, blob: bytes) -> Header:
        if len(blob) < HEADER.size:
            raise BlobError(f"sparse blob is truncated ({len(blob)} bytes, header needs 36)")
        magic, version, fmt, dtype, aux, *rest = HEADER.unpack_from(blob)
        if magic != MAGIC:
            raise BlobError("not an onnxprune sparse blob (bad magic bytes)")
        if version != VERSION:
            raise BlobError(f"sparse blob layout version {version} is not supported")
        rows, cols, nnz, entries, scale, p0, p1 = rest
        return cls(fmt, dtype, rows, cols, nnz, entries, aux, scale, p0, p1)


@dataclass(frozen=True)
class Section:
    """One payload array: `count` items of `dtype`, or `count` packed `bits`-wide fields."""

    name: str
    count: int
    dtype: np.dtype | None = None
    bits: int = 0

    @property
    def nbytes(self) -> int:
        if self.dtype is None:
            return packed_nbytes(self.count, self.bits)
        return self.count * self.dtype.itemsize


def serialize(
    header: Header, sections: Sequence[Section], arrays: Mapping[str, np.ndarray]
) -> bytes:
    parts = [header.pack()]
    for sec in sections:
        arr = np.asarray(arrays[sec.name])
        if arr.size != sec.count:
            raise AssertionError(f"section {sec.name}: {arr.size} items, layout says {sec.count}")
        if sec.dtype is None:
            parts.append(pack_bits(arr.ravel(), sec.bits).tobytes())
        else:
            parts.append(arr.astype(sec.dtype, copy=False).tobytes())
    return b"".join(parts)


def read_sections(blob: bytes, sections: Sequence[Section]) -> dict[str, np.ndarray]:
    """Arrays of each section (packed fields unpacked to int64), checking the total size."""
    expected = HEADER.size + sum(sec.nbytes for sec in sections)
    if len(blob) != expected:
        raise BlobError(f"sparse blob has {len(blob)} bytes; its header implies {expected}")
    out: dict[str, np.ndarray] = {}
    offset = HEADER.size
    for sec in sections:
        if sec.dtype is None:
            raw = np.frombuffer(blob, dtype=np.uint8, count=sec.nbytes, offset=offset)
            out[sec.name] = unpack_bits(raw, sec.count, sec.bits)
        else:
            out[sec.name] = np.frombuffer(blob, dtype=sec.dtype, count=sec.count, offset=offset)
        offset += sec.nbytes
    return out
