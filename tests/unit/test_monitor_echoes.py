"""Re-send anchors (`monitor.resends.Resends`): a natural row that re-sends a fresh anchor
is kept as an echo, so an honest noisy re-read of it is a re-send even when the row it
echoes lies beyond the radius; noisy rows never echo, and echoes do not chain."""

from __future__ import annotations

import numpy as np

from modelfence.monitor.resends import Resends


def _row(x: float) -> np.ndarray:
    return np.array([x, 0.0, 0.0, 0.0], dtype=np.float32)


def _yes() -> bool:
    return True


def _no() -> bool:
    return False


def test_a_natural_row_near_an_anchor_anchors_its_own_noisy_re_reads() -> None:
    filt = Resends(4, radius=1.0)
    assert filt.seen(_row(0.0), label=1, natural=_yes) is None  # fresh: an anchor
    assert filt.seen(_row(0.9), label=2, natural=_yes) == 1  # a re-send of it, and an echo
    # 0.8 from the echo, 1.7 from the anchor: a re-send of the echo, answered its class
    assert filt.seen(_row(1.7), label=2, natural=_yes) == 2


def test_a_noisy_row_never_anchors_and_what_lies_beyond_it_is_fresh() -> None:
    filt = Resends(4, radius=1.0)
    assert filt.seen(_row(0.0), label=1, natural=_yes) is None
    assert filt.seen(_row(0.9), label=2, natural=_no) == 1  # a re-send, not natural: no echo
    assert filt.seen(_row(1.7), label=2, natural=_no) is None  # 1.7 from the only anchor


def test_echoes_do_not_chain_so_a_walk_is_fresh_again_within_two_radii() -> None:
    filt = Resends(4, radius=1.0)
    assert filt.seen(_row(0.0), natural=_yes) is None
    walk = [0.9, 1.7, 2.5]  # each step within one radius of the last
    got = [filt.seen(_row(x), natural=_yes) for x in walk]
    # 0.9 echoes the anchor, 1.7 re-sends the echo (and does not echo: it matched one),
    # 2.5 is 1.6 from the echo and 2.5 from the anchor: fresh
    assert got[:2] == [0, 0] and got[2] is None


def test_without_a_naturalness_verdict_only_fresh_rows_anchor() -> None:
    filt = Resends(4, radius=1.0)
    assert filt.seen(_row(0.0)) is None
    assert filt.seen(_row(0.9)) == 0
    assert filt.seen(_row(1.7)) is None


def test_an_exact_re_send_is_not_kept_twice() -> None:
    filt = Resends(4, radius=1.0)
    assert filt.seen(_row(0.0), natural=_yes) is None
    for _ in range(5):
        assert filt.seen(_row(0.0), natural=_yes) == 0
    assert filt.rows.count == 1
