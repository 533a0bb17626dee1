"""`pqorder study ...`: packaged studies of one finding of the paper on the user's model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pqorder.cli.analyses import _floats, _num
from pqorder.cli.app import app, console, with_options

study_app = typer.Typer(help="Packaged studies (results go to the run store and the report).")
app.add_typer(study_app, name="study")


@study_app.command()
@with_options("protocol", "calibration", "study")
def rotation(
    prune: Annotated[
        list[str], typer.Option(help="Pruner step without its ratio (repeatable).")
    ] = ["sparsegpt", "sleb:samples=8"],  # noqa: B006
    ratios: Annotated[str, typer.Option(help="Pruning ratios.")] = "0.05,0.1,0.2,0.3,0.4",
    rotate: Annotated[str, typer.Option(help="The rotation step.")] = "rotate",
    plot: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("rotation.png"),
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Pruning with and without a prior QuaRot rotation, ratio by ratio (stored, plotted)."""
    from pqorder import api
    from pqorder.analysis.rotation_study import plot_rotation

    ratio_values = _floats(ratios, "--ratios")
    result = api.rotation_study(study(), prune, ratio_values, rotate)
    print_rotation(result)
    plot_rotation(result, plot)
    console.print(f"plot: {plot}")


def print_rotation(result) -> None:
    table = Table(
        "pruner", "ratio", "plain", "after rotation", "×", title="perplexity with/without rotation"
    )
    for p in result.points:
        factor = None if p.factor is None else f"{p.factor:.2f}"
        table.add_row(
            p.pruner, f"{p.ratio:g}", _num(p.ppl_plain), _num(p.ppl_rotated), factor or "—"
        )
    console.print(table)
    console.print(
        f"dense {_num(result.dense_ppl)}, rotated before pruning {_num(result.rotated_ppl)}"
    )
