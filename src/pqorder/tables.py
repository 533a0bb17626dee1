"""One table description for every result, drawn in the terminal, in Markdown or in HTML.

A result builds a ``Table`` of raw cell values once; the CLI prints it with rich and the
report writes it as Markdown and HTML, so a number reads the same everywhere.
"""

from __future__ import annotations

import html as _html
from dataclasses import dataclass

from rich.table import Table as RichTable
from rich.text import Text

Cell = str | int | float | None


def cell(value: Cell) -> str:
    """How a value is written: 3 decimals (1 from 1000 on), a dash when missing."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


@dataclass(frozen=True)
class Table:
    """Columns and rows of raw values; ``title`` heads it in the terminal (in a report, the
    section heading does)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]

    def markdown(self) -> list[str]:
        """Markdown lines, ending with a blank line."""
        lines = ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in self.rows]
        return [*lines, ""]

    def html(self) -> str:
        e = _html.escape
        head = "".join(f"<th>{e(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{e(cell(v))}</td>" for v in row) + "</tr>" for row in self.rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    def rich(self) -> RichTable:
        """A rich table (cells as plain text: brackets in step text are not markup)."""
        table = RichTable(*self.columns, title=self.title or None)
        for row in self.rows:
            table.add_row(*(Text(cell(v)) for v in row))
        return table
