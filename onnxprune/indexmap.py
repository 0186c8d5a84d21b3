"""Index maps: how a set of channel positions on one tensor axis moves through an op.

A group's channels are described on every tensor it touches by a `positions`
array of shape [channels, k]: row c lists the k positions along the tensor's
channel axis that belong to group channel c (k = 1 for an ordinary feature map,
k = H*W after a Flatten into a fully connected layer). These functions map such
arrays between tensors, exactly or not at all: when a map cannot be proven they
raise `Unmappable` and the caller blocks the group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from onnxprune.graph import Dim


class Unmappable(Exception):
    """The channel positions cannot be expressed exactly on the other tensor."""


def identity(channels: int) -> np.ndarray:
    """Positions of a group that owns a whole axis, in order: [[0], [1], ...]."""
    return np.arange(channels, dtype=np.int64)[:, None]


def _is_static(dims: Sequence[Dim]) -> bool:
    return all(isinstance(d, int) for d in dims)


def through_reshape(
    in_dims: Sequence[Dim], axis: int, positions: np.ndarray, out_dims: Sequence[Dim]
) -> tuple[int, np.ndarray]:
    """Map channel positions on `axis` of a tensor shaped `in_dims` to a reshape of it.

    Reshape keeps the row-major order of elements. Leading dims before the channel
    axis (e.g. a symbolic batch) are set aside whenever the dims after them are
    static with the same element count on both sides: membership of an element in
    a channel then depends only on its offset inside that trailing block. On the
    block the channel's element set is enumerated and we look for an output axis
    whose coordinate alone decides membership. That covers Flatten into a fully
    connected layer (one channel -> a block of features), its inverse, and any
    reshape that keeps the channel on an axis of its own; a channel split across
    two output axes (channel shuffle) is Unmappable.
    """
    split = _trailing_blocks(in_dims, out_dims, axis)
    if split is None:
        raise Unmappable(
            f"reshape {list(in_dims)} -> {list(out_dims)} mixes the channel axis with "
            "dimensions that are not static"
        )
    in_head, out_head = split
    in_rest = [int(d) for d in in_dims[in_head:]]  # type: ignore[arg-type]
    out_rest = [int(d) for d in out_dims[out_head:]]  # type: ignore[arg-type]
    block = math.prod(in_rest)
    local_axis = axis - in_head
    members = np.sort(
        _all_elements_with(in_rest, local_axis, positions).reshape(positions.shape[0], -1), axis=1
    )  # [C, m]
    coords = np.unravel_index(members, out_rest)
    for out_axis, size in enumerate(out_rest):
        per_position = block // size
        if members.shape[1] % per_position:
            continue
        # If the channel owns whole slices along out_axis, each of its coordinates
        # appears exactly per_position times; verify by rebuilding the element set.
        chosen = np.sort(coords[out_axis], axis=1)[:, ::per_position]
        expected = np.sort(
            _all_elements_with(out_rest, out_axis, chosen).reshape(chosen.shape[0], -1), axis=1
        )
        if np.array_equal(expected, members):
            return out_axis + out_head, chosen
    raise Unmappable(
        f"reshape {list(in_dims)} -> {list(out_dims)} spreads a channel over several axes"
    )


def _all_elements_with(dims: list[int], axis: int, positions: np.ndarray) -> np.ndarray:
    """Flat indices of all elements whose coordinate on `axis` is in each row of positions."""
    flat = np.arange(math.prod(dims), dtype=np.int64).reshape(dims)
    picked = np.take(flat, positions, axis=axis)  # dims[:a] + [C, k] + dims[a+1:]
    return np.moveaxis(picked, axis, 0)


def _trailing_blocks(
    in_dims: Sequence[Dim], out_dims: Sequence[Dim], axis: int
) -> tuple[int, int] | None:
    """Head lengths (in, out) after which both shapes are static with equal products.

    The longest heads are preferred (the enumerated block stays small), with the
    input head ending at or before the channel axis.
    """
    out_products: dict[int, int] = {}
    product = 1
    for p in range(len(out_dims), -1, -1):
        if p < len(out_dims):
            d = out_dims[p]
            if not isinstance(d, int):
                break
            product *= d
        out_products.setdefault(product, p)  # first seen = longest head
    for p_in in range(axis, -1, -1):
        rest = in_dims[p_in:]
        if not _is_static(rest):
            continue
        p_out = out_products.get(math.prod(rest))  # type: ignore[arg-type]
        if p_out is not None:
            return p_in, p_out
    return None


def flatten_dims(dims: Sequence[Dim], axis: int) -> tuple[Dim, Dim]:
    """The output shape of ONNX Flatten(axis) for an input of `dims`."""
    head, tail = dims[:axis], dims[axis:]
    head_size: Dim = math.prod(head) if _is_static(head) else None  # type: ignore[arg-type]
    tail_size: Dim = math.prod(tail) if _is_static(tail) else None  # type: ignore[arg-type]
    return head_size, tail_size
