"""Figures: saved where asked, with titles that fit the figure."""

from __future__ import annotations

import pytest

from pqorder.errors import ConfigError
from pqorder.plotting import figure, panels


def test_long_titles_wrap_to_the_figure_and_short_ones_stay(tmp_path):
    long = "wanda × rtn:bits=4,group=128, recovery " + "lora:rank=8,steps=24,lr=0.0005," * 4
    with figure(tmp_path / "sub" / "long.png", (6.4, 4.4)) as ax:
        ax.plot([0, 1], [0, 1])
        ax.set_title(long, fontsize=9)
    lines = ax.title.get_text().split("\n")
    assert len(lines) > 1 and max(map(len, lines)) <= 70
    assert "".join(ax.title.get_text().split()) == "".join(long.split())  # nothing lost
    assert ax.title.get_fontsize() == 9
    assert (tmp_path / "sub" / "long.png").stat().st_size > 1000
    with figure(tmp_path / "short.png") as ax:
        ax.set_title("order advantage")
    assert ax.title.get_text() == "order advantage"


def test_panels_fill_rows_and_hide_the_unused_cells(tmp_path):
    with panels(tmp_path / "five.png", 5, 3, (3.0, 2.5)) as axes:
        assert len(axes) == 5
        for i, ax in enumerate(axes):
            ax.plot([0, 1], [i, i])
            ax.set_title(f"panel {i}")
        figure_ = axes[0].figure
    assert all(ax.get_visible() for ax in axes)
    hidden = [ax for ax in figure_.axes if not ax.get_visible()]
    assert len(figure_.axes) == 6 and len(hidden) == 1  # 2 rows of 3, the sixth cell hidden
    assert tuple(figure_.get_size_inches()) == (9.0, 5.0)
    assert (tmp_path / "five.png").stat().st_size > 1000
    with panels(tmp_path / "one.png", 1, 4) as axes:  # fewer panels than columns: one column
        assert len(axes) == 1
    assert tuple(axes[0].figure.get_size_inches()) == (6.4, 4.4)
    none = tmp_path / "none.png"  # e.g. a grid of no points
    with pytest.raises(ConfigError, match="at least one panel, got 0"), panels(none, 0):
        pass
    assert not none.exists()
