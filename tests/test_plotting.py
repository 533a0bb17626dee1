"""Figures: saved where asked, with titles that fit the figure."""

from __future__ import annotations

from pqorder.plotting import figure


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
