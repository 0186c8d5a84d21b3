"""Index maps on their own: exact, or Unmappable / Regroup — never a guess."""

from __future__ import annotations

import numpy as np
import pytest

from onnxprune.indexmap import (
    Regroup,
    Unmappable,
    axis_after_removing,
    axis_before_removing,
    canonical,
    collapse_blocks,
    collapse_strided,
    expand_blocks,
    expand_strided,
    identity,
    split_ranges,
    through_reshape,
)


def test_split_ranges_offsets_and_none_for_untouched_parts():
    pos = np.array([[4], [5]])
    parts = split_ranges(pos, [(0, 4), (4, 8)])
    assert parts[0] is None and parts[1].tolist() == [[0], [1]]


def test_split_ranges_asks_to_separate_rows_that_go_different_ways():
    with pytest.raises(Regroup) as info:
        split_ranges(identity(4), [(0, 2), (2, 4)])
    assert info.value.mode == "split"
    assert info.value.labels.tolist() in ([1, 1, 0, 0], [0, 0, 1, 1])


def test_blocks_round_trip_and_incomplete_blocks():
    pos = np.array([[1], [3]])
    wide = expand_blocks(pos, 3)
    assert wide.tolist() == [[3, 4, 5], [9, 10, 11]]
    assert collapse_blocks(wide, 3).tolist() == [[1], [3]]
    with pytest.raises(Unmappable):
        collapse_blocks(np.array([[3, 4]]), 3)  # position 5 is not in the group


def test_collapse_merges_rows_that_share_a_block():
    with pytest.raises(Regroup) as info:
        collapse_blocks(np.array([[0], [1], [2], [3]]), 2)
    labels = info.value.labels
    assert info.value.mode == "merge"
    assert labels[0] == labels[1] and labels[2] == labels[3] and labels[0] != labels[2]


def test_strided_units_are_one_offset_per_slab():
    units = expand_strided(identity(3), 3, 2)
    assert units.tolist() == [[0, 3], [1, 4], [2, 5]]
    assert collapse_strided(units, 3, 2).tolist() == [[0], [1], [2]]
    with pytest.raises(Regroup):
        collapse_strided(identity(6), 3, 2)  # channel 0 must go with channel 3


def test_through_reshape_follows_units_through_a_channel_shuffle():
    """Units {j, j+4} of 8 channels (2 groups of 4) land on axis 2 of [N, 2, 4, H, W]."""
    units = expand_strided(identity(4), 4, 2)
    axis, pos = through_reshape(("N", 8, 2, 2), 1, units, ("N", 2, 4, 2, 2))
    assert axis == 2 and pos.tolist() == [[0], [1], [2], [3]]
    # after the transpose to [N, 4, 2, H, W] and back to [N, 8, H, W]: consecutive pairs
    axis, pos = through_reshape(("N", 4, 2, 2, 2), 1, pos, ("N", 8, 2, 2))
    assert axis == 1 and pos.tolist() == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_through_reshape_asks_for_units_at_a_channel_shuffle():
    with pytest.raises(Regroup) as info:
        through_reshape(("N", 8, 2, 2), 1, identity(8), ("N", 2, 4, 2, 2))
    assert info.value.mode == "merge"
    assert info.value.labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]  # c and c + 4 together


def test_through_reshape_refuses_to_tear_a_channel():
    with pytest.raises(Unmappable):
        through_reshape(("N", 3, 2), 1, identity(3), ("N", 2, 3))


def test_canonical_sorts_rows():
    assert canonical(np.array([[3, 1], [2, 0]])).tolist() == [[1, 3], [0, 2]]


def test_axis_moves_when_axes_are_removed():
    assert axis_after_removing(3, [0, 2]) == 1
    assert axis_before_removing(1, [0, 2], 4) == 3
