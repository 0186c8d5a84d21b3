"""Value encodings of a blob: fp32, fp16, or int8 with one symmetric per-tensor scale.

Formats store *codes*: the raw bits of each value (uint32 for fp32, uint16 for fp16) or the
int8 integer, and an entry is stored iff its code is non-zero. Negative zero is a zero (a
weight pruned by `w * mask` is -0.0 wherever w < 0, and must not count as stored), so it
becomes +0.0; every other fp32 value round-trips bit-exactly, NaN payloads included.
fp16/int8 blobs decode to exactly `quantized_dense(x)`; a weight that quantizes to 0 is
not stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnxprune.errors import UsageError


@dataclass(frozen=True)
class ValueType:
    name: str
    code: int  # on-disk identifier (header byte 6)
    code_dtype: np.dtype  # little-endian storage dtype of one code
    nbytes: int


VALUE_TYPES: dict[str, ValueType] = {
    "fp32": ValueType("fp32", 0, np.dtype("<u4"), 4),
    "fp16": ValueType("fp16", 1, np.dtype("<u2"), 2),
    "int8": ValueType("int8", 2, np.dtype("i1"), 1),
}
BY_CODE = {v.code: v for v in VALUE_TYPES.values()}
INT8_MAX = 127


def value_type(name: str) -> ValueType:
    try:
        return VALUE_TYPES[name]
    except KeyError:
        valid = ", ".join(VALUE_TYPES)
        raise UsageError(f"unknown value dtype '{name}'; valid value dtypes: {valid}") from None


def quantize(x: np.ndarray, value_dtype: str) -> tuple[np.ndarray, float]:
    """(codes, scale): codes in the storage dtype; scale is 1.0 except for int8."""
    vt = value_type(value_dtype)
    x = np.asarray(x)
    if vt.name == "fp32":
        return _no_negative_zero(x.astype(np.float32).view(vt.code_dtype)), 1.0
    if vt.name == "fp16":
        finite = np.isfinite(x)
        with np.errstate(over="ignore"):
            half = x.astype(np.float16)
        if not np.isfinite(half[finite]).all():
            raise UsageError("weights exceed the fp16 range (|w| > 65504); use fp32 values")
        return _no_negative_zero(half.view(vt.code_dtype)), 1.0
    if x.size and not np.isfinite(x).all():
        raise UsageError("weights contain NaN or inf; int8 values need finite weights")
    amax = float(np.max(np.abs(x.astype(np.float64)))) if x.size else 0.0
    scale = float(np.float32(amax / INT8_MAX)) if amax > 0 else 1.0
    if scale == 0.0:  # amax below float32 resolution: nothing survives quantization
        scale = 1.0
    q = np.rint(x.astype(np.float64) / scale)
    return np.clip(q, -INT8_MAX, INT8_MAX).astype(np.int8), scale


def dequantize(codes: np.ndarray, value_dtype: str, scale: float = 1.0) -> np.ndarray:
    """float32 values of `codes` (exact for fp32 bits and fp16)."""
    vt = value_type(value_dtype)
    codes = np.asarray(codes)
    if vt.name == "fp32":
        return codes.astype(vt.code_dtype, copy=False).view(np.float32)
    if vt.name == "fp16":
        return codes.astype(vt.code_dtype, copy=False).view(np.float16).astype(np.float32)
    return codes.astype(np.float32) * np.float32(scale)


def quantized_dense(x: np.ndarray, value_dtype: str) -> np.ndarray:
    """What every format decodes `x` to: the dense tensor after value quantization."""
    codes, scale = quantize(x, value_dtype)
    return dequantize(codes, value_dtype, scale)


def _no_negative_zero(codes: np.ndarray) -> np.ndarray:
    """Map the bits of -0.0 (sign bit only) to +0.0, in place on a fresh array."""
    sign = codes.dtype.type(1 << (8 * codes.dtype.itemsize - 1))
    codes[codes == sign] = 0
    return codes
