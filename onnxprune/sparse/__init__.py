"""Sparse storage of pruned weights: documented byte layouts, exact decoders, byte counts.

Formats work on the 2-D [out, in] view of a weight (`to_matrix`); `write_blobs` writes a
directory of blobs plus manifest.json and `load` reads it back to the dense weights.
"""

from __future__ import annotations

from onnxprune.sparse.blob import BlobError
from onnxprune.sparse.compressed import BlockShapeError
from onnxprune.sparse.formats import (
    FORMATS,
    BlobStats,
    ParsedBlob,
    analyze,
    decode,
    decode_codes,
    encode,
    encode_with_stats,
    get_format,
    parse,
    size_bytes,
)
from onnxprune.sparse.options import DEFAULT_INDEX_BITS, Options
from onnxprune.sparse.runlength import EIEPointerError
from onnxprune.sparse.store import DEFAULT_FORMATS, MANIFEST, load, read_manifest, write_blobs
from onnxprune.sparse.values import VALUE_TYPES, dequantize, quantize, quantized_dense
from onnxprune.sparse.view import KINDS, from_matrix, matrix_shape, to_matrix

__all__ = [
    "DEFAULT_FORMATS",
    "DEFAULT_INDEX_BITS",
    "FORMATS",
    "KINDS",
    "MANIFEST",
    "VALUE_TYPES",
    "BlobError",
    "BlobStats",
    "BlockShapeError",
    "EIEPointerError",
    "Options",
    "ParsedBlob",
    "analyze",
    "decode",
    "decode_codes",
    "dequantize",
    "encode",
    "encode_with_stats",
    "from_matrix",
    "get_format",
    "load",
    "matrix_shape",
    "parse",
    "quantize",
    "quantized_dense",
    "read_manifest",
    "size_bytes",
    "to_matrix",
    "write_blobs",
]
