"""`pqorder study ...`: packaged studies of one finding of the paper on the user's model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pqorder.cli.analyses import _floats
from pqorder.cli.app import app, console, with_options
from pqorder.tables import cell

if TYPE_CHECKING:
    from pqorder.analysis.rotation_study import RotationStudy

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


def print_rotation(result: RotationStudy) -> None:
    """The rotation study's table (the report's) and the dense and rotated perplexities."""
    console.print(result.table().rich())
    console.print(
        f"dense {cell(result.dense_ppl)}, rotated before pruning {cell(result.rotated_ppl)}"
    )
