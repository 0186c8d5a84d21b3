"""Index maps: how a set of channel positions on one tensor axis moves through an op.

A group's channels are described on every tensor it touches by a `positions`
array of shape [channels, k]: row c lists the k positions along the tensor's
channel axis that belong to group channel c (k = 1 for an ordinary feature map,
k = H*W after a Flatten into a fully connected layer, k = g for the units of a
grouped convolution). A group may own only part of an axis. These functions map
such arrays between tensors, exactly or not at all: when a map cannot be proven
they raise `Unmappable` and the caller blocks the group. When a map exists only
for a coarser or finer choice of rows, they raise `Regroup` saying how the rows
must be merged or separated; the dependency graph then restarts the group.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from onnxprune.graph import Dim


class Unmappable(Exception):
    """The channel positions cannot be expressed exactly on the other tensor."""


class Regroup(Exception):
    """The map exists once the group's rows are restructured.

    mode "merge": rows with equal `labels` must become one channel (pruned together);
    mode "split": rows with different `labels` must go to different groups.
    """

    def __init__(self, mode: str, labels: np.ndarray, reason: str) -> None:
        super().__init__(reason)
        self.mode = mode
        self.labels = np.asarray(labels, dtype=np.int64)
        self.reason = reason
        self.node: str | None = None  # filled in by whoever knows where it was raised


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
    reshape that keeps the channel on an axis of its own. A channel split across two
    output axes (a channel shuffle) asks for units of one channel per group (Regroup);
    anything else is Unmappable.
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
    _merge_for_shuffle(coords, out_rest)
    raise Unmappable(
        f"reshape {list(in_dims)} -> {list(out_dims)} spreads a channel over several axes"
    )


def _merge_for_shuffle(coords: tuple[np.ndarray, ...], out_rest: list[int]) -> None:
    """A channel axis factored into several axes ([N, g, C/g, ...], a channel shuffle).

    Each channel sits at one coordinate of every factor; merging the channels that
    share their coordinate on the largest factor gives units (one channel of every
    shuffle group, same offset) that own whole slices of that axis. Removing such
    units keeps the groups equal, which is what the shuffle needs.
    """
    for axis in sorted(range(len(out_rest)), key=lambda a: -out_rest[a]):
        c = coords[axis]
        if c.shape[1] and (c == c[:, :1]).all():
            labels = c[:, 0]
            if np.unique(labels).size < labels.size:
                raise Regroup(
                    "merge",
                    labels,
                    "a reshape splits the channel axis (channel shuffle); a unit is one "
                    "channel of every group",
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


def canonical(positions: np.ndarray) -> np.ndarray:
    """Rows are sets: sort each so that two maps of the same channels compare equal."""
    return np.sort(np.asarray(positions, dtype=np.int64).reshape(positions.shape[0], -1), axis=1)


def shift(positions: np.ndarray, delta: int) -> np.ndarray:
    """Positions on a tensor that sits at offset `delta` inside (or outside) another."""
    return positions + int(delta)


def split_ranges(
    positions: np.ndarray, ranges: Sequence[tuple[int, int]]
) -> list[np.ndarray | None]:
    """Positions falling into each [start, stop) range, relative to its start (Concat/Split/Slice).

    Every row must put the same number of positions into each range (possibly none:
    then that range gets None); rows that differ must live in different groups.
    """
    counts = np.stack(
        [((positions >= a) & (positions < b)).sum(axis=1) for a, b in ranges], axis=1
    )  # [C, parts]
    if len(counts) and not (counts == counts[0]).all():
        _, labels = np.unique(counts, axis=0, return_inverse=True)
        raise Regroup("split", labels.reshape(-1), "channels fall into different parts")
    parts: list[np.ndarray | None] = []
    for j, (a, b) in enumerate(ranges):
        k = int(counts[0, j]) if len(counts) else 0
        if k == 0:
            parts.append(None)
            continue
        inside = (positions >= a) & (positions < b)
        parts.append(positions[inside].reshape(positions.shape[0], k) - a)
    return parts


def expand_blocks(positions: np.ndarray, m: int) -> np.ndarray:
    """p -> {p*m, ..., p*m + m-1}: a channel that owns a contiguous block of m positions."""
    out = positions[:, :, None] * m + np.arange(m, dtype=np.int64)
    return out.reshape(positions.shape[0], -1)


def collapse_blocks(positions: np.ndarray, m: int) -> np.ndarray:
    """Inverse of expand_blocks: rows must hold whole blocks of m (else merge or block)."""
    return _collapse(positions, positions // m, m, f"a block of {m} channels")


def expand_strided(positions: np.ndarray, n: int, r: int) -> np.ndarray:
    """c -> {c, c + n, ..., c + (r-1)*n}: one channel in each of r equal slabs of size n."""
    out = positions[:, :, None] + n * np.arange(r, dtype=np.int64)
    return out.reshape(positions.shape[0], -1)


def collapse_strided(positions: np.ndarray, n: int, r: int) -> np.ndarray:
    """Inverse of expand_strided: each row must hold the same offsets in all r slabs of n.

    This is what keeps a grouped convolution's groups equal: removing offset o of
    every group shrinks the weight's per-group axis by exactly those offsets.
    """
    if positions.size and int(positions.max()) >= n * r:
        raise Unmappable(f"positions exceed {r} slabs of {n}")
    return _collapse(positions, positions % n, r, f"one channel in each of {r} groups")


def _collapse(positions: np.ndarray, targets: np.ndarray, full: int, what: str) -> np.ndarray:
    """Map each row's positions to the targets they cover, each target covered `full` times.

    A target whose `full` preimage positions are not all in the group cannot be
    expressed (Unmappable); one whose preimage is spread over several rows means
    those rows must be merged (Regroup).
    """
    rows_n = positions.shape[0]
    flat = targets.reshape(-1)
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if (counts != full).any():
        raise Unmappable(f"a unit of {what} needs channels that lie outside this group")
    rows = np.repeat(np.arange(rows_n), positions.shape[1])
    low = np.full(len(uniq), rows_n, dtype=np.int64)
    high = np.full(len(uniq), -1, dtype=np.int64)
    np.minimum.at(low, inverse, rows)
    np.maximum.at(high, inverse, rows)
    if (low != high).any():
        incidence = coo_matrix(
            (np.ones(len(rows)), (rows, inverse.reshape(-1))), shape=(rows_n, len(uniq))
        ).tocsr()
        _, labels = connected_components(incidence @ incidence.T, directed=False)
        raise Regroup("merge", labels, f"channels must go in units of {what}")
    return np.sort(targets, axis=1)[:, ::full]


def axis_after_removing(axis: int, removed: Sequence[int]) -> int:
    """Where `axis` lands once the axes in `removed` are dropped (Squeeze, Reduce, Gather)."""
    return axis - sum(1 for r in removed if r < axis)


def axis_before_removing(axis: int, removed: Sequence[int], rank: int) -> int:
    """Inverse of axis_after_removing for an input of `rank` axes."""
    kept = [a for a in range(rank) if a not in set(removed)]
    return kept[axis]
