"""Per-caller state kept in memory for the callers seen most recently.

Guards remember something per principal (or per model and principal) in process memory; a
flood of fresh keys must not grow that without bound, so the least recently seen are
forgotten past a limit. `recent` is that get-or-make-and-touch step, written once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def recent(table: OrderedDict[K, V], key: K, new: Callable[[], V], most: int) -> V:
    """`table[key]`, made by `new()` when absent, now the most recently used; past `most`
    entries the least recently used are dropped."""
    value = table.get(key)
    if value is None:
        value = table[key] = new()
        while len(table) > most:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return value
