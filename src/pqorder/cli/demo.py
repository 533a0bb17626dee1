"""`pqorder demo`: the order study on the built-in model, end to end, in about 15 minutes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pqorder.cli.app import NoCacheOpt, StoreOpt, app, console
from pqorder.cli.orders import (
    print_interference,
    print_recommendation,
    print_search,
    print_sweep,
)

PAIR = ("sparsegpt:ratio=0.3", "gptq:bits=4,group=128")
# The sweep uses data-free methods so the whole demo fits in about 15 minutes on 2 cores.
SWEEP_PRUNERS = ("magnitude",)
SWEEP_RATIOS = (0.1, 0.2, 0.3)
SWEEP_QUANT = "rtn:group=128"
SWEEP_BITS = (3, 4, 5)


@app.command()
def demo(
    model: Annotated[str, typer.Option("--model", "-m")] = "smollm2-135m",
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("out/demo"),
    study: Annotated[str, typer.Option(help="Study name in the store.")] = "demo",
    max_tokens: Annotated[int, typer.Option(help="Evaluation tokens of Emma.")] = 4096,
    calib_samples: Annotated[int, typer.Option(help="Calibration samples.")] = 32,
    calib_seqlen: Annotated[int, typer.Option(help="Tokens per calibration sample.")] = 256,
    store: StoreOpt = None,
    no_cache: NoCacheOpt = False,
) -> None:
    """Recommend, search, sweep, interference and report on SmolLM2 with Austen text."""
    import time

    from pqorder import api
    from pqorder.analysis.recommend import weaker_first
    from pqorder.data.calibration import CalibrationSpec
    from pqorder.eval.perplexity import PerplexityProtocol
    from pqorder.pipeline import parse_step

    start = time.perf_counter()
    protocol = PerplexityProtocol("austen:emma", 512, max_tokens, 4)
    calibration = CalibrationSpec("austen:pride", calib_samples, calib_seqlen, 0)
    s = api.open_study(model, study, protocol, calibration, store, cache=not no_cache)
    console.rule("1. recommendation")
    rec = api.recommend(s, list(PAIR))
    print_recommendation(rec)
    console.rule("2. search: both orders")
    res = api.search(s, list(PAIR), rec.order)
    print_search(res)
    console.rule("3. sweep: order advantage vs. CER gap")
    sweep = api.sweep(s, SWEEP_PRUNERS, SWEEP_RATIOS, SWEEP_QUANT, SWEEP_BITS, out / "sweep.png")
    print_sweep(sweep)
    console.rule("4. order-dependent units and interference")
    pairs = [
        (f"{p}:ratio={r}", f"{SWEEP_QUANT},bits=4")
        for p in SWEEP_PRUNERS
        for r in SWEEP_RATIOS
        if p == "magnitude" or r == 0.2
    ]
    print_interference(api.interference(s, pairs))
    report = api.report(s, out)
    held = res.pih_was_best
    rho = sweep.rho.get("all")
    console.rule("summary")
    weaker = weaker_first(s, [parse_step(t) for t in PAIR])[0].to_text()
    console.print(
        f"weaker method: {weaker}; PIH order {'was' if held else 'was NOT'} the best "
        f"of the searched orders; sweep Spearman ρ(A, CER gap) = "
        f"{'-' if rho is None else f'{rho:.2f}'}"
    )
    console.print(
        f"report: {report} (and report.html, sweep.png beside it); run store: {s.store.path}"
    )
    console.print(f"protocol: evaluation {protocol}; calibration {calibration}")
    if s.lm.caveat:
        console.print(f"[yellow]note:[/] {s.lm.caveat}")
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s")
