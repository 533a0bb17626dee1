"""Order-analysis commands: recommend, search, sweep, interference, runs, report, demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pqorder.cli.app import StoreOpt, StudyOpt, app, console, with_options
from pqorder.pipeline import label, order_label
from pqorder.store import m_text

MethodsArg = Annotated[list[str], typer.Option("--methods", help="Steps to order (repeatable).")]


def _value(run, digits: int = 2) -> str:
    """A run's number: perplexity with 2 decimals, accuracy-like metrics with 4."""
    if not run.ok:
        return "failed"
    return f"{run.value:.{digits if run.perplexity is not None else 4}f}"


def print_recommendation(rec) -> None:
    dense_run = rec.intensity.dense
    metric = dense_run.metric_name
    table = Table(
        "method",
        "family",
        "granularity",
        f"{metric} alone",
        "G vs dense",
        "CER C*",
        title=f"intensity (dense {metric} {_value(dense_run)})",
    )
    dense = dense_run.metric
    for m in rec.intensity.methods:
        gap = f"{dense - m.metric:.4g}" if m.run.ok else "failed"
        table.add_row(label(m.step), m.family, m.granularity, _value(m.run), gap, m.cer.describe())
    console.print(table)
    gaps = ", ".join("?" if g is None else f"{g:+.3f}" for g in rec.cer_gaps)
    console.print(f"recommended order (weaker first): [bold]{order_label(rec.order)}[/]")
    console.print(f"confidence: {rec.confidence} (CER gap {gaps})")
    for w in rec.warnings:
        console.print(f"[yellow]warning:[/] {w}")


def print_search(res) -> None:
    metric = res.orders[0][1].metric_name
    table = Table("order", metric, "status", title="orders (best first)")
    for order, run in res.orders:
        table.add_row(order_label(order), _value(run) if run.ok else "-", run.status)
    console.print(table)
    for pair, a in res.advantages.items():
        console.print(f"A({pair}) = {a:+.4f}  ({m_text(metric)})")
    verdict = {True: "yes", False: "no", None: "-"}[res.pih_was_best]
    s = res.spend
    console.print(f"best: [bold]{order_label(res.best)}[/]; PIH recommendation was best: {verdict}")
    console.print(
        f"compute: {s.applied_steps} steps applied ({s.applied_seconds:.0f} s) vs "
        f"{res.naive_steps} ({res.naive_seconds:.0f} s) without reuse; "
        f"{s.cache_hits} prefix-cache hits, {s.stored_hits} stored runs reused"
    )


def _steps(texts: list[str]):
    from pqorder.pipeline import parse_step

    return [parse_step(t) for t in texts]


@app.command()
@with_options("protocol", "calibration", "study")
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
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Which method is stronger here, and the weaker-first order to use."""
    from pqorder import api

    options = _curve_options(reference, bits, ratio, reference_bits, space)
    steps = _steps(methods)
    s = study()
    print_recommendation(api.recommend(s, steps, options, collapse))


def _curve_options(reference, bits, ratio, reference_bits, space):
    from pqorder.analysis.intensity import CurveOptions
    from pqorder.errors import ConfigError

    if ratio not in ("fraction", "factor"):
        raise ConfigError(f"--ratio must be 'fraction' or 'factor', got '{ratio}'")
    if space not in ("metric", "logppl"):
        raise ConfigError(f"--space must be 'metric' or 'logppl', got '{space}'")
    return CurveOptions(reference, _ints(bits, "--bits"), ratio, reference_bits, space)


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
@with_options("protocol", "calibration", "study")
def search(
    methods: MethodsArg,
    beam: Annotated[int, typer.Option(help="Beam width for more than 4 methods.")] = 3,
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Try the orders (all of them for up to 4 methods) and compare with the PIH order."""
    from pqorder import api

    steps = _steps(methods)
    s = study()
    from pqorder.analysis.recommend import weaker_first

    pih = [p.to_text() for p in weaker_first(s, steps)]
    print_search(api.search(s, steps, pih, beam))


@app.command()
@with_options("protocol", "calibration", "study")
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
    s = study()
    result = api.pair_grid(s, prune_steps, quant_steps)
    print_pair_grid(result, s.lm.name)
    if s.lm.caveat:
        console.print(f"[yellow]note:[/] {s.lm.caveat}")
    if json_out:
        json_out.write_text(json.dumps({"model": s.lm.name, **result.to_dict()}, indent=2))


def print_pair_grid(result, model: str) -> None:
    def num(v: float | None) -> str:
        return "failed" if v is None else f"{v:.4g}"

    metric = result.metric
    table = Table(
        *("prune P", "quant Q", "P alone", "Q alone", "P→Q", "Q→P", "A(Q→P)", "better order"),
        title=f"{model}: {metric}; dense {num(result.dense)}",
    )
    for r in result.pairs:
        a = r.advantage_q_first
        better = "-" if a is None else "Q→P" if a > 0 else "P→Q" if a < 0 else "tie"
        table.add_row(
            r.prune,
            r.quant,
            *(num(v) for v in (r.prune_alone, r.quant_alone)),
            *(num(v) for v in (r.prune_then_quant, r.quant_then_prune)),
            "-" if a is None else f"{a:+.4g}",
            better,
        )
    console.print(table)
    console.print(f"A(Q→P) = M(Q→P) − M(P→Q), M = {m_text(metric)}")


@app.command()
@with_options("protocol", "calibration", "study")
def sweep(
    prune: Annotated[list[str], typer.Option(help="Pruning method (repeatable).")] = ["magnitude"],  # noqa: B006
    ratios: Annotated[str, typer.Option(help="Pruning ratios.")] = "0.1,0.2,0.3",
    quant: Annotated[str, typer.Option(help="Quantizer (bits filled in).")] = "rtn:group=128",
    bits: Annotated[str, typer.Option(help="Bit-widths.")] = "3,4,5",
    plot: Annotated[Path, typer.Option(help="Where to write the PNG.")] = Path("sweep.png"),
    protocol=None,
    calibration=None,
    study=None,
) -> None:
    """Both orders over pruning ratios × bit-widths: A(Q→P) against the CER gap, with ρ."""
    from pqorder import api

    ratio_values, bit_values = _floats(ratios, "--ratios"), _ints(bits, "--bits")
    s = study()
    result = api.sweep(s, prune, ratio_values, quant, bit_values, plot)
    print_sweep(result)
    console.print(f"plot: {plot}")


def print_sweep(result) -> None:
    table = Table(
        "pruner",
        "ratio",
        "bits",
        "P→Q",
        "Q→P",
        "CER gap",
        "A(Q→P)",
        "collapse",
        title=f"sweep ({result.metric}; A in {m_text(result.metric)})",
    )
    digits = 2 if result.metric == "perplexity" else 4
    for p in result.points:
        table.add_row(
            p.prune,
            f"{p.ratio:g}",
            str(p.bits),
            _num(p.value_prune_then_quant, digits),
            _num(p.value_quant_then_prune, digits),
            _num(p.cer_gap, 3),
            _num(p.advantage_q_first, digits, "+"),
            "yes" if p.collapse else "",
        )
    console.print(table)
    console.print(
        "Spearman ρ(A, CER gap): "
        + ", ".join(f"{k} {_num(v, 2)}" for k, v in sorted(result.rho.items()))
    )


def _num(value, digits: int = 2, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.{digits}f}"


@app.command()
@with_options("protocol", "calibration", "study")
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
    s = study()
    print_interference(api.interference(s, pairs))


def print_interference(results) -> None:
    table = Table("P", "Q", "A measured", "A predicted", "Δ interference", "order-dep. units")
    for r in results:
        table.add_row(
            label(r.prune),
            label(r.quant),
            _num(r.measured, 3, "+"),
            _num(r.predicted, 3, "+"),
            _num(r.interference, 3, "+"),
            f"{r.order_dependent_units}/{len(r.units)}",
        )
    console.print(table)


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
    from pqorder.store import RunStore

    db = RunStore(store)
    rows = db.query(study, model, status, contains)
    table = Table("id", "study", "model", "pipeline", "metric", "value", "status", "seconds")
    for r in rows:
        table.add_row(
            str(r.id),
            r.study,
            r.model,
            r.pipeline,
            r.metric_name,
            _num(r.value, 2 if r.perplexity is not None else 4),
            r.status,
            f"{r.seconds:.1f}",
        )
    console.print(table)
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
