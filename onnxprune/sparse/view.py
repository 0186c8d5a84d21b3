"""The 2-D view of a weight tensor that every sparse format and every N:M rule works on.

Rows are output channels/features and columns are everything else, flattened in C order,
so "along the input dimension" always means "along a row". The orientation cannot be
guessed from a shape (a square Gemm weight reads both ways), so the caller names it:

- ``conv``: Conv/ConvTranspose weight, rows = axis 0: [O, I, kh, kw] -> [O, I*kh*kw].
- ``fc``:   stored [out, in] (Gemm with transB=1): the matrix is the array itself.
- ``fc_t``: stored [in, out] (MatMul, Gemm with transB=0): rows = the last axis,
  [..., K, N] -> [N, prod(...)*K] (the transpose for 2-D weights).

A 1-D tensor is one row [1, n]; a scalar is [1, 1].
"""

from __future__ import annotations

import math

import numpy as np

from onnxprune.errors import UsageError

KINDS = ("conv", "fc", "fc_t")


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UsageError(f"unknown weight kind '{kind}'; valid kinds: {', '.join(KINDS)}")
    return kind


def kind_family(kind: str) -> str:
    """'conv' or 'fc': the family whose default relative-index width applies."""
    return "conv" if check_kind(kind) == "conv" else "fc"


def matrix_shape(shape: tuple[int, ...], kind: str) -> tuple[int, int]:
    """The [rows, cols] of `to_matrix` for an array of `shape`."""
    check_kind(kind)
    shape = tuple(int(d) for d in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return 1, shape[0]
    rows = shape[-1] if kind == "fc_t" else shape[0]
    return rows, math.prod(shape) // rows if rows else 0


def to_matrix(array: np.ndarray, kind: str) -> np.ndarray:
    """The [rows = outputs, cols = inputs] view of a weight (a copy only for ``fc_t``)."""
    array = np.asarray(array)
    rows, cols = matrix_shape(array.shape, kind)
    if array.ndim >= 2 and kind == "fc_t":
        array = np.moveaxis(array, -1, 0)
    return array.reshape(rows, cols)


def from_matrix(matrix: np.ndarray, shape: tuple[int, ...], kind: str) -> np.ndarray:
    """Inverse of `to_matrix`: the tensor of `shape` whose view is `matrix`."""
    shape = tuple(int(d) for d in shape)
    if tuple(matrix.shape) != matrix_shape(shape, kind):
        raise UsageError(
            f"a {list(matrix.shape)} matrix is not the '{kind}' view of a {list(shape)} tensor"
        )
    if len(shape) >= 2 and kind == "fc_t":
        moved = matrix.reshape((shape[-1], *shape[:-1]))
        return np.ascontiguousarray(np.moveaxis(moved, 0, -1))
    return matrix.reshape(shape)
