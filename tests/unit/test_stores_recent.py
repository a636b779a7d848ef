"""`stores.recent`: per-caller state for the callers seen most recently, bounded."""

from __future__ import annotations

from collections import OrderedDict

from modelfence.stores.recent import recent


def test_recent_makes_keeps_and_forgets_the_least_recently_used() -> None:
    table: OrderedDict[str, list[int]] = OrderedDict()
    a = recent(table, "a", list, 2)
    a.append(1)
    assert recent(table, "a", list, 2) is a  # kept, not made again
    recent(table, "b", list, 2)
    recent(table, "a", list, 2)  # "a" is now the most recent: "b" goes first
    recent(table, "c", list, 2)
    assert list(table) == ["a", "c"] and table["a"] == [1]
    assert recent(table, "b", list, 2) == []  # forgotten, so made anew
    assert list(table) == ["c", "b"]
