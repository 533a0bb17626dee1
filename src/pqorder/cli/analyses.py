"""Order-analysis commands: recommend, search, sweep, interference, runs, report, demo."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from pqorder.cli.app import StoreOpt, StudyOpt, app, console, with_options
from pqorder.tables import cell

if TYPE_CHECKING:
    from pqorder.analysis.pairs import PairGrid
    from pqorder.analysis.recommend import Recommendation
    from pqorder.analysis.search import SearchResult
    from pqorder.analysis.sweep import SweepResult
    from pqorder.analysis.units import InterferenceResult
    from pqorder.methods.base import Method

MethodsArg = Annotated[list[str], typer.Option("--methods", help="Steps to order (repeatable).")]


def print_recommendation(rec: Recommendation) -> None:
    """The intensity and prediction tables (the report's), both orders, verdict and warnings."""
    console.print(rec.table().rich())
    if rec.calls:
        console.print(rec.prediction_table().rich())
    gaps = ", ".join("?" if g is None else f"{g:+.3f}" for g in rec.cer_gaps)
    console.print(
        f"weaker first: {escape(rec.labels(rec.rule_order))} "
        f"(confidence {rec.confidence}, CER gap {gaps})"
    )
    console.print(f"recommended order: [bold]{escape(rec.order_label)}[/]")
    console.print(f"verdict: [bold]{escape(rec.verdict)}[/]")
    for w in rec.warnings:
        console.print(f"[yellow]warning:[/] {escape(w)}")


def print_search(res: SearchResult) -> None:
    """The orders and pairwise advantages (the report's tables), the best order, the cost."""
    console.print(res.table().rich())
    if res.advantages:
        console.print(res.advantage_table().rich())
    verdict = {True: "yes", False: "no", None: "-"}[res.pih_was_best]
    s = res.spend
    best = escape(res.order_label(res.best))
    console.print(f"best: [bold]{best}[/]; PIH recommendation was best: {verdict}")
    console.print(
        f"compute: {s.applied_steps} steps applied ({s.applied_seconds:.0f} s) vs "
        f"{res.naive_steps} ({res.naive_seconds:.0f} s) without reuse; "
        f"{s.cache_hits} prefix-cache hits, {s.stored_hits} stored runs reused"
    )


def _steps(texts: list[str]) -> list[Method]:
    from pqorder.pipeline import parse_step

    return [parse_step(t) for t in texts]


@app.command()
@with_options("protocol", "calibration", "hardware", "study")
def recommend(
    methods: MethodsArg,
    collapse: Annotated[float, typer.Option(help="Collapse zone: ppl alone > this × dense.")] = 3.0,
    reference: Annotated[str, typer.Option(help="CER reference quantizer.")] = "rtn:group=128",
    bits: Annotated[str, typer.Option(help="Reference curve bit-widths.")] = "3,4,5,6,7,8",
    ratio: Annotated[
        str, typer.Option(help="C_Q mapping: fraction (1−b/B) or factor (B/b).")
    ] = "fraction",
    reference_bits: Annotated[int, typer.Option(help="B, the uncompressed bit-width.")] = 16,
    space: Annotated[str, typer.Option(help="Interpolate in 'metric' or 'logppl'.")] = "metric",
    every: Annotated[
        int, typer.Option(help="Predictor: local errors on the units of every k-th block.")
    ] = 5,
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Which order to use: predicted advantage with its interval, weaker first, a verdict."""
    from pqorder import api

    options = _curve_options(reference, bits, ratio, reference_bits, space)
    steps = _steps(methods)
    s = study(steps)
    print_recommendation(api.recommend(s, steps, options, collapse, every=every))


def _curve_options(reference, bits, ratio, reference_bits, space):
    from pqorder.analysis.intensity import CurveOptions
    from pqorder.errors import ConfigError

    if ratio not in ("fraction", "factor"):
        raise ConfigError(f"--ratio must be 'fraction' or 'factor', got '{ratio}'")
    if space not in ("metric", "logppl"):
        raise ConfigError(f"--space must be 'metric' or 'logppl', got '{space}'")
    return CurveOptions(reference, _ints(bits, "--bits"), ratio, reference_bits, space)


def _filled(texts: list[str], key: str, values: tuple[float, ...]) -> list[Method]:
    """The steps a sweep builds from texts without ``key``, at its first value (memory
    plans need the methods, not every setting)."""
    from pqorder.pipeline import parse_step

    return [parse_step(t, {key: values[0]}) for t in texts] if values else []


def _ints(text: str, flag: str) -> tuple[int, ...]:
    from pqorder.errors import ConfigError

    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated integers, got '{text}'") from None


def _floats(text: str, flag: str) -> tuple[float, ...]:
    from pqorder.errors import ConfigError

    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers, got '{text}'") from None


@app.command()
@with_options("protocol", "calibration", "hardware", "study")
def search(
    methods: MethodsArg,
    beam: Annotated[int, typer.Option(help="Beam width for more than 4 methods.")] = 3,
    strategy: Annotated[
        str, typer.Option(help="auto (every order up to 4 methods), exhaustive or beam.")
    ] = "auto",
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Try the orders (all of them for up to 4 methods) and compare with the PIH order."""
    from pqorder import api

    steps = _steps(methods)
    s = study(steps)
    from pqorder.analysis.recommend import weaker_first

    pih = [p.to_text() for p in weaker_first(s, steps)]
    print_search(api.search(s, steps, pih, beam, strategy))


@app.command()
@with_options("protocol", "calibration", "hardware", "study")
def grid(
    prune: Annotated[list[str] | None, typer.Option(help="Pruning step (repeatable).")] = None,
    quant: Annotated[list[str] | None, typer.Option(help="Quantization step (repeatable).")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write JSON here.")] = None,
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Both orders of every pruning × quantization pair: each alone, P→Q, Q→P and A(Q→P)."""
    import json

    from pqorder import api
    from pqorder.analysis.pairs import check_families

    prune_steps = _steps(prune or ["magnitude:ratio=0.1", "magnitude:ratio=0.25"])
    quant_steps = _steps(quant or ["rtn:bits=4,group=128", "rtn:bits=3,group=128"])
    check_families(prune_steps, quant_steps)
    s = study(prune_steps + quant_steps)
    result = api.pair_grid(s, prune_steps, quant_steps)
    print_pair_grid(result, s.lm.name)
    if s.lm.caveat:
        console.print(f"[yellow]note:[/] {s.lm.caveat}")
    if json_out:
        json_out.write_text(json.dumps({"model": s.lm.name, **result.to_dict()}, indent=2))


def print_pair_grid(result: PairGrid, model: str) -> None:
    """The pair grid's table, titled with the model, and what A means here."""
    table = result.table()
    console.print(replace(table, title=f"{model}: {table.title}").rich())
    console.print(f"A(Q→P) = M(Q→P) − M(P→Q), M = {result.m_text}")


@app.command()
@with_options("protocol", "calibration", "hardware", "study")
def sweep(
    prune: Annotated[
        list[str],
        typer.Option(help="Pruning step, ratio filled in (repeatable): sparsegpt:damp=0.05."),
    ] = ["magnitude"],  # noqa: B006
    ratios: Annotated[str, typer.Option(help="Pruning ratios.")] = "0.1,0.2,0.3",
    quant: Annotated[str, typer.Option(help="Quantizer, bits filled in.")] = "rtn:group=128",
    bits: Annotated[str, typer.Option(help="Bit-widths.")] = "3,4,5",
    plot: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("sweep.png"),
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Both orders over pruning ratios × bit-widths: A(Q→P) against the CER gap, with ρ."""
    from pqorder import api

    ratio_values, bit_values = _floats(ratios, "--ratios"), _ints(bits, "--bits")
    s = study(_filled(prune, "ratio", ratio_values) + _filled([quant], "bits", bit_values))
    result = api.sweep(s, prune, ratio_values, quant, bit_values, plot)
    print_sweep(result)
    console.print(f"plot: {plot}")


def print_sweep(result: SweepResult) -> None:
    """The sweep's table (the report's), Spearman ρ per pruner, and how often each ordering
    rule (weaker first, always prune first, always quantize first) picked the better order."""
    from pqorder.analysis.validation import score_rules, scores_table

    console.print(result.table().rich())
    rho = ", ".join(f"{k} {cell(v)}" for k, v in sorted(result.rho.items()))
    console.print(f"Spearman ρ(A, CER gap): {rho}")
    console.print(scores_table(score_rules(result.points)).rich())


@app.command()
@with_options("protocol", "calibration", "hardware", "study")
def interference(
    pair: Annotated[list[str], typer.Option(help="'prune-step | quant-step' (repeatable).")],
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Order-dependent units, the advantage they predict, and the interference remainder."""
    from pqorder import api
    from pqorder.errors import ConfigError

    pairs = []
    for text in pair:
        if "|" not in text:
            raise ConfigError(f"--pair takes 'prune-step | quant-step', got '{text}'")
        p, q = (t.strip() for t in text.split("|", 1))
        pairs.append((p, q))
    s = study(_steps([text for pair in pairs for text in pair]))
    print_interference(api.interference(s, pairs))


def print_interference(results: list[InterferenceResult]) -> None:
    """The interference table (the report's)."""
    from pqorder.analysis.units import interference_table

    console.print(interference_table(results).rich())


@app.command()
def runs(
    study: Annotated[str | None, typer.Option(help="Only this study.")] = None,
    model: Annotated[str | None, typer.Option(help="Only this model.")] = None,
    status: Annotated[str | None, typer.Option(help="ok or failed.")] = None,
    contains: Annotated[str | None, typer.Option(help="Pipeline text contains.")] = None,
    export: Annotated[Path | None, typer.Option(help="Write the rows to .csv or .json.")] = None,
    store: StoreOpt = None,
) -> None:
    """List (and export) stored runs."""
    from pqorder.store import RunStore, runs_table

    db = RunStore(store)
    rows = db.query(study, model, status, contains)
    console.print(runs_table(rows).rich())
    if export:
        db.export(rows, export)
        console.print(f"exported {len(rows)} runs to {export}")


@app.command()
def report(
    study: StudyOpt = "default",
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("report"),
    store: StoreOpt = None,
) -> None:
    """Markdown and HTML report of a study from the run store, with plots."""
    from pqorder.report import write_report
    from pqorder.store import RunStore

    md, page = write_report(RunStore(store), study, out)
    console.print(f"report: {md}  and  {page}")
