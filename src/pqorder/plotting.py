"""Figures of results, drawn headless to a file at one size and resolution."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes


@contextmanager
def figure(path: Path, size: tuple[float, float] = (6.4, 4.4)) -> Iterator[Axes]:
    """Axes to draw on; when the block ends the title is wrapped to the figure's width, the
    figure laid out and saved to ``path`` (its folder created), and closed in any case."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    try:
        yield ax
        ax.title.set_text(textwrap.fill(ax.title.get_text(), int(size[0] * 11)))
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
