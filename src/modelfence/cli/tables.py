"""Tables that read at 80 columns: short headers, nothing cropped, the rest under --wide.

When the terminal is narrow, rich shortens headers and values with an ellipsis, or cuts
the table at the edge: a principal's name or a key id that reads `prin…` is worse than
useless. A `Grid` sizes its columns for the terminal it is printed on: columns that must
stay whole (ids, times, numbers) keep their width, the others share what is left (the
narrow ones first, so one long value does not squeeze the rest) and fold a longer value
onto the next lines, every character kept, never narrower than their header. Commands with
more to show than 80 columns hold keep the rest for `--wide`, as kubectl does.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field

from rich.console import Console, ConsoleOptions
from rich.table import Table
from rich.text import Text

_BORDER = 3  # a rich box column costs its two padding spaces and one line


@dataclass
class _Column:
    header: str
    whole: bool
    right: bool
    cells: list[str] = field(default_factory=list)

    def natural(self) -> int:
        """The widest line of the header or a cell (cells may hold several lines)."""
        return max([len(line) for line in self.header.split("\n")]
                   + [Text.from_markup(c).cell_len for cell in self.cells
                      for c in cell.split("\n")])


class Grid:
    """A table of text cells (rich markup allowed) sized for the console it is printed on."""

    def __init__(self, headers: Sequence[str] = (), *, whole: Collection[str] = (),
                 right: Collection[str] = (), title: str | None = None) -> None:
        self.title = title
        self._columns: list[_Column] = []
        for header in headers:
            self.add_column(header, whole=header in whole or header in right,
                            right=header in right)

    def add_column(self, header: str, *, whole: bool = False, right: bool = False) -> None:
        """A column that folds long values unless `whole`; `right` aligns numbers."""
        self._columns.append(_Column(header, whole or right, right))

    def add_row(self, *values: str) -> None:
        if len(values) != len(self._columns):
            raise ValueError(f"{len(values)} values for {len(self._columns)} columns")
        for column, value in zip(self._columns, values, strict=True):
            column.cells.append(value)

    @property
    def row_count(self) -> int:
        return len(self._columns[0].cells) if self._columns else 0

    def widths(self, available: int) -> list[int]:
        """Each column's width so the table fits in `available` characters if it can."""
        natural = [c.natural() for c in self._columns]
        widths = list(natural)
        room = available - _BORDER * len(widths) - 1 - sum(
            w for w, c in zip(natural, self._columns, strict=True) if c.whole)
        folding = sorted((i for i, c in enumerate(self._columns) if not c.whole),
                         key=lambda i: natural[i])
        for n, i in enumerate(folding):
            header = max(len(line) for line in self._columns[i].header.split("\n"))
            share = max(room // (len(folding) - n), header)
            widths[i] = min(natural[i], share)
            room -= widths[i]
        return widths

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Table]:
        t = Table(title=self.title, title_justify="left", title_style="bold")
        widths = self.widths(options.max_width)
        fits = sum(widths) + _BORDER * len(widths) + 1 <= options.max_width
        for column, width in zip(self._columns, widths, strict=True):
            # too narrow even so: every column folds, whole ones too, rather than be cut
            t.add_column(column.header, justify="right" if column.right else "left",
                         no_wrap=column.whole and fits, overflow="fold",
                         width=width if fits else None)
        for row in zip(*(c.cells for c in self._columns), strict=True):
            t.add_row(*row)
        yield t
