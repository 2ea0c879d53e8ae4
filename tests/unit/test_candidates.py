"""The compact store of every read's model candidates (ml.inference.candidates)."""

from __future__ import annotations

import numpy as np
import pytest

from ml.inference.candidates import Candidates


def test_lists_come_back_as_filled_with_keys_the_log_never_held() -> None:
    cands = Candidates(4, 3, ["a", "b", "c"])
    lists = [[("b", 0.5), ("new:7", 0.25)], [], [("c", 1.0), ("a", 0.125), ("new:7", 0.1)]]
    cands.fill([3, 0, 1], lists)
    assert cands[3] == lists[0] and cands[0] == [] and cands[1] == lists[2] and cands[2] == []
    assert len(cands) == 4 and list(cands) == [[], lists[2], [], lists[0]]
    assert cands.names == ["a", "b", "c", "new:7"]  # (a named key outside the log: added once)
    # Scores keep every bit the composer gave them (the arm compares and merges them).
    third = 1 / 3
    cands.fill([2], [[("a", third)]])
    assert cands[2][0][1] == third


def test_take_gives_the_reads_in_the_order_asked() -> None:
    cands = Candidates(3, 2, ["x", "y"])
    cands.fill([0, 1, 2], [[("x", 0.9)], [("y", 0.8), ("z", 0.1)], []])
    part = cands.take(np.array([2, 1]))
    assert list(part) == [[], [("y", 0.8), ("z", 0.1)]]
    part.fill([0], [[("w", 0.5)]])  # (its own rows; the names table is shared)
    assert cands[2] == [] and cands.names[-1] == "w"


def test_more_candidates_than_it_holds_is_an_error() -> None:
    with pytest.raises(ValueError, match="a read has 3 candidates, more than the 2 this holds"):
        Candidates(1, 2, []).fill([0], [[("a", 0.3), ("b", 0.2), ("c", 0.1)]])
