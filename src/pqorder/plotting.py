"""Figures of results, drawn headless to a file at one size and resolution."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from pqorder.errors import ConfigError

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@contextmanager
def figure(path: Path, size: tuple[float, float] = (6.4, 4.4)) -> Iterator[Axes]:
    """Axes to draw on; when the block ends the title is wrapped to the figure's width, the
    figure laid out and saved to ``path`` (its folder created), and closed in any case."""
    with panels(path, 1, 1, size) as axes:
        yield axes[0]


@contextmanager
def panels(
    path: Path, count: int, columns: int = 3, panel: tuple[float, float] = (6.4, 4.4)
) -> Iterator[list[Axes]]:
    """``count`` axes in rows of ``columns``, each ``panel`` inches, saved like ``figure``
    (unused cells of the last row are hidden)."""
    if count < 1:
        raise ConfigError(f"a figure needs at least one panel, got {count}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    size = (panel[0] * columns, panel[1] * rows)
    fig, grid = plt.subplots(rows, columns, figsize=size, squeeze=False)
    cells = [ax for row in grid for ax in row]
    for ax in cells[count:]:
        ax.set_visible(False)
    try:
        yield cells[:count]
        for ax in cells[:count]:
            ax.title.set_text(textwrap.fill(ax.title.get_text(), int(panel[0] * 11)))
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
