"""`pqorder study ...`: packaged studies of one finding of the paper on the user's model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pqorder.cli.analyses import _filled, _floats, _steps
from pqorder.cli.app import app, console, with_options
from pqorder.tables import cell

if TYPE_CHECKING:
    from pqorder.analysis.lora_study import LoraStudy
    from pqorder.analysis.metric_agreement import MetricAgreement
    from pqorder.analysis.mpq import MPQStudy
    from pqorder.analysis.rotation_study import RotationStudy
    from pqorder.analysis.share import ShareStudy
    from pqorder.analysis.stages import StagesStudy

study_app = typer.Typer(help="Packaged studies (results go to the run store and the report).")
app.add_typer(study_app, name="study")


@study_app.command()
@with_options("protocol", "calibration", "hardware", "study")
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
    steps = [*_filled(prune, "ratio", ratio_values), *_steps([rotate])]
    result = api.rotation_study(study(steps), prune, ratio_values, rotate)
    print_rotation(result)
    plot_rotation(result, plot)
    console.print(f"plot: {plot}")


def print_rotation(result: RotationStudy) -> None:
    """The rotation study's table (the report's) and the dense and rotated perplexities."""
    console.print(result.table().rich())
    console.print(
        f"dense {cell(result.dense_ppl)}, rotated before pruning {cell(result.rotated_ppl)}"
    )


@study_app.command()
@with_options("protocol", "calibration", "hardware", "study")
def stages(
    prune: Annotated[
        list[str], typer.Option(help="Pruner step without its ratio (repeatable).")
    ] = ["sparsegpt", "wanda"],  # noqa: B006
    total: Annotated[float, typer.Option(help="The model's sparsity after the last stage.")] = 0.4,
    first: Annotated[
        str, typer.Option(help="Sparsity reached before the middle step, one split each.")
    ] = "0.3,0.2,0.1",
    middle: Annotated[
        str, typer.Option(help="The step between the stages (quantization or rotation).")
    ] = "gptq:bits=4,group=128",
    plot: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("stages.png"),
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Pruning split into two stages around a middle step, front- to back-loaded, plus all
    before and all after (ratios are cumulative: the model's sparsity after each stage)."""
    from pqorder import api
    from pqorder.analysis.stages import check_stages

    first_values = _floats(first, "--first")
    check_stages(prune, total, first_values, middle)  # bad input is refused before the model loads
    result = api.stages_study(study(), prune, total, first_values, middle, plot)
    print_stages(result)
    console.print(f"plot: {plot}")


def print_stages(result: StagesStudy) -> None:
    """The stages study's tables (the report's) and its one-line answer."""
    console.print(result.table().rich())
    console.print(result.mirror_table().rich())
    console.print(result.summary())


@study_app.command()
@with_options("protocol", "calibration", "hardware", "study")
def metrics(
    prune: Annotated[list[str] | None, typer.Option(help="Pruning step (repeatable).")] = None,
    quant: Annotated[list[str] | None, typer.Option(help="Quantization step (repeatable).")] = None,
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Both orders of each pair on lm-eval tasks (``--protocol lm-eval --tasks --limit``) and
    on perplexity (default text and windows): does the better order agree across metrics?"""
    from pqorder import api
    from pqorder.analysis.pairs import check_families
    from pqorder.errors import ConfigError
    from pqorder.eval.harness import LmEvalProtocol
    from pqorder.eval.perplexity import PerplexityProtocol

    if not isinstance(protocol, LmEvalProtocol):
        raise ConfigError(
            "study metrics compares lm-eval tasks with perplexity: pass --protocol lm-eval "
            "(and --tasks, --limit)"
        )
    prune_steps = _steps(prune or ["sparsegpt:ratio=0.5"])
    quant_steps = _steps(quant or ["gptq:bits=4,group=128"])
    check_families(prune_steps, quant_steps)
    s = study(prune_steps + quant_steps)
    result = api.metric_agreement(s, prune_steps, quant_steps, [PerplexityProtocol()])
    print_metric_agreement(result)


def print_metric_agreement(result: MetricAgreement) -> None:
    """The agreement table and how to read it."""
    console.print(result.table().rich())
    console.print(
        "A(Q→P) = M(Q→P) − M(P→Q) per metric; ±95% from the runs' standard errors where known"
    )


@study_app.command()
@with_options("protocol", "calibration", "hardware", "study")
def mpq(
    step: Annotated[
        str, typer.Option(help="The mpq step without avg/order (set, quant, group, sym).")
    ] = "mpq:set=2/3/4/8,quant=gptq,group=128",
    budgets: Annotated[str, typer.Option(help="Average bits per weight, one run set each.")] = (
        "3,4,5"
    ),
    plot: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("mpq.png"),
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Mixed precision as an order: per budget, bit groups quantized high to low
    (progressive), low to high (regressive) and at once, plus each half alone."""
    from pqorder import api
    from pqorder.analysis.mpq import check_mpq

    budget_values = _floats(budgets, "--budgets")
    check_mpq(step, budget_values)  # bad input is refused before the model loads
    result = api.mpq_study(study(), step, budget_values, plot)
    print_mpq(result)
    console.print(f"plot: {plot}")


def print_mpq(result: MPQStudy) -> None:
    """The mpq study's tables (the report's) and its one-line answer."""
    console.print(result.table().rich())
    console.print(result.interference_table().rich())
    console.print(result.runs_table().rich())
    console.print(result.summary())


@study_app.command()
@with_options("protocol", "calibration", "hardware", "study")
def lora(
    prune: Annotated[str, typer.Option(help="Pruner step without its ratio.")] = "sparsegpt",
    ratios: Annotated[str, typer.Option(help="Pruning ratios (the intensity levels).")] = "0.3,0.5",
    quant: Annotated[str, typer.Option(help="The quantization step.")] = "rtn:bits=4,group=128",
    recover: Annotated[
        str, typer.Option(help="The lora step (its merge setting applies when it is last).")
    ] = "lora",
    plot: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("lora.png"),
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """LoRA recovery placed last after both orders of a pruner and a quantizer, and between
    them, at each pruning ratio: does the stronger method later still win after recovery?"""
    from pqorder import api
    from pqorder.analysis.lora_study import check_lora_study
    from pqorder.methods.lora import check_held_out

    ratio_values = _floats(ratios, "--ratios")
    prunes, q, lora_step = check_lora_study(prune, ratio_values, quant, recover)  # before loading
    check_held_out([lora_step], protocol, calibration.source)
    result = api.lora_study(
        study([*prunes, q, lora_step]), prune, ratio_values, quant, recover, plot
    )
    print_lora(result)
    console.print(f"plot: {plot}")


def print_lora(result: LoraStudy) -> None:
    """The lora study's tables (the report's) and its one-line answer."""
    console.print(result.table().rich())
    console.print(result.advantage_table().rich())
    console.print(result.summary())


@study_app.command()
@with_options("protocol", "calibration", "hardware", "study")
def share(
    prune: Annotated[str, typer.Option(help="Pruner step without its ratio.")] = "sparsegpt",
    shares: Annotated[str, typer.Option(help="Sharing ratios (parameters removed).")] = (
        "0.1,0.2,0.3"
    ),
    prunes: Annotated[str, typer.Option(help="Pruning ratios.")] = "0.2,0.4",
    step: Annotated[
        str, typer.Option("--share", help="The sharing step without its ratio.")
    ] = "share:group=2",
    plot: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("share.png"),
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Parameter sharing (Basis Sharing) × pruning in both orders at every pair of ratios, plus
    each step alone: the order advantage against the intensity gap."""
    from pqorder import api
    from pqorder.analysis.share import check_share_study

    share_values, prune_values = _floats(shares, "--shares"), _floats(prunes, "--prunes")
    check_share_study(prune, share_values, prune_values, step)  # before the model loads
    result = api.share_study(study(), prune, share_values, prune_values, step, plot)
    print_share(result)
    console.print(f"plot: {plot}")


def print_share(result: ShareStudy) -> None:
    """The share study's table (the report's) and its one-line answer."""
    console.print(result.table().rich())
    console.print(result.summary())
