"""`pqorder demo`: the order study on the built-in models, end to end, in about 15 minutes.

The same plan runs on SmolLM2 (perplexity) and on the Fashion-MNIST CNN (top-1), so the
language-model and vision answers to "does weaker-first win?" sit side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from pqorder.cli.analyses import (
    print_interference,
    print_recommendation,
    print_search,
    print_sweep,
)
from pqorder.cli.app import DeviceOpt, DtypeOpt, NoCacheOpt, OffloadOpt, StoreOpt, app, console

if TYPE_CHECKING:
    from pqorder.analysis.recommend import Recommendation
    from pqorder.analysis.search import SearchResult
    from pqorder.analysis.sweep import SweepResult
    from pqorder.study import Study


@dataclass(frozen=True)
class Plan:
    """One demo study: a method pair to order, then a pruning × bit-width sweep of both orders.

    Both are the paper's setting (a calibrated pruner against a quantizer), not Harma's
    magnitude × min-max case; the sweep is kept to a few points so that the whole demo stays
    near 15 minutes on 2 cores. The default LM protocol (8 × 128 calibration tokens, 2,048
    evaluation tokens) is the validation grid's (``benchmarks/pih_grid.py``), so the demo's
    sweep points can be read against the grid's.
    """

    pair: tuple[str, str]
    pruner: str
    ratios: tuple[float, ...]
    quant: str
    bits: tuple[int, ...]


LM_PLAN = Plan(
    ("sparsegpt:ratio=0.3", "gptq:bits=4,group=128,sym=true"),  # symmetric: exportable
    "wanda",  # calibrated but without an OBS solve: the sweep's eight runs stay cheap
    (0.2, 0.4),
    "rtn:group=128",
    (4, 5),  # 3 bits at group 128 puts SmolLM2 in the collapse zone (measured: ≈ 4× dense)
)
VISION_PLAN = Plan(
    ("sparsegpt:ratio=0.5", "gptq:bits=3,group=0"),
    "sparsegpt",
    (0.3, 0.4, 0.5),
    "rtn:group=0",
    (2, 3, 4, 5),  # 2 bits extends the CER curve far enough to place 40–50% pruning
)


def _order_study(
    s: Study, plan: Plan, out: Path, label: str
) -> tuple[Recommendation, SearchResult, SweepResult, Path]:
    """Recommend and search the pair, sweep, interference, report (their results, the report)."""
    from pqorder import api

    console.rule(f"{label}1. recommendation")
    rec = api.recommend(s, list(plan.pair))
    print_recommendation(rec)
    console.rule(f"{label}2. search: both orders")
    res = api.search(s, list(plan.pair), rec.rule_order)
    print_search(res)
    console.rule(f"{label}3. sweep: order advantage vs. CER gap")
    sweep = api.sweep(s, [plan.pruner], plan.ratios, plan.quant, plan.bits, out / "sweep.png")
    print_sweep(sweep)
    console.rule(f"{label}4. order-dependent units and interference")
    pairs = [(f"{plan.pruner}:ratio={r}", f"{plan.quant},bits=4") for r in plan.ratios]
    print_interference(api.interference(s, pairs))
    return rec, res, sweep, api.report(s, out)


def _export_best(s: Study, res: SearchResult, out: Path) -> None:
    """Export the best searched order's model: compressed-tensors where its grid allows, else
    the plain checkpoint (with the reason); print dense vs exported size on disk."""
    from pqorder.errors import ConfigError
    from pqorder.export import export_model
    from pqorder.export.footprint import disk_bytes
    from pqorder.pipeline import parse_step

    console.rule("5. export: the best order's model")
    dense = sum(p.numel() * p.element_size() for p in s.lm.model.parameters())  # fp32 weights
    s.materialize([parse_step(t) for t in res.best])
    try:
        done = export_model(s.lm, "compressed-tensors", out / "best-compressed-tensors", True)
    except ConfigError as exc:
        console.print(f"[yellow]compressed-tensors refused:[/] {exc}")
        done = export_model(s.lm, "dense", out / "best-dense", True)
    size = disk_bytes(done.path)
    console.print(
        f"{res.order_label(res.best)}: {done.path} {size / 2**20:.1f} MiB on disk vs "
        f"{dense / 2**20:.1f} MiB of dense fp32 weights ({size / dense:.2f} of the dense size)"
    )
    s.reset()


def _summary(
    s: Study, plan: Plan, rec: Recommendation, res: SearchResult, sweep: SweepResult, report: Path
) -> None:
    from pqorder.analysis.recommend import weaker_first
    from pqorder.pipeline import parse_step

    weaker = weaker_first(s, [parse_step(t) for t in plan.pair])[0].label()
    rho = sweep.rho.get("all")
    console.print(
        f"{s.lm.name}: weaker method {weaker}; PIH order "
        f"{'was' if res.pih_was_best else 'was NOT'} the best of the searched orders; "
        f"recommended order {'was' if res.best == tuple(rec.order) else 'was NOT'} the best "
        f"({rec.verdict}); sweep Spearman ρ(A, CER gap) = "
        f"{'-' if rho is None else f'{rho:.2f}'}; report {report}"
    )
    console.print(f"  protocol: evaluation {s.protocol}; calibration {s.calibration}")
    if s.lm.caveat:
        console.print(f"  [yellow]note:[/] {s.lm.caveat}")


@app.command()
def demo(
    model: Annotated[str, typer.Option("--model", "-m")] = "smollm2-135m",
    vision: Annotated[
        str, typer.Option(help="Vision model for the second study ('' to skip it).")
    ] = "fmnist-cnn",
    out: Annotated[Path, typer.Option("--out", "-o", help="Report folder.")] = Path("out/demo"),
    study: Annotated[str, typer.Option(help="Study name in the store.")] = "demo",
    max_tokens: Annotated[int, typer.Option(help="Evaluation tokens of Emma.")] = 2048,
    calib_samples: Annotated[int, typer.Option(help="Calibration samples.")] = 8,
    calib_seqlen: Annotated[int, typer.Option(help="Tokens per calibration sample.")] = 128,
    store: StoreOpt = None,
    no_cache: NoCacheOpt = False,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    offload: OffloadOpt = False,
) -> None:
    """Recommend, search, sweep, interference and report on SmolLM2 with Austen text, then
    the same on the Fashion-MNIST CNN (top-1 on the official test split)."""
    import time

    from pqorder import api
    from pqorder.data.calibration import CalibrationSpec
    from pqorder.errors import ConfigError
    from pqorder.eval.perplexity import PerplexityProtocol
    from pqorder.eval.select import protocol_for
    from pqorder.hardware import resolve_hardware
    from pqorder.models.loading import model_kind

    if vision and model_kind(vision) != "vision":  # both studies' settings checked up front
        raise ConfigError(f"--vision takes a vision model (e.g. fmnist-cnn), not {vision!r}")
    vision_protocol = protocol_for(vision) if vision else None
    placement = resolve_hardware(device, dtype, offload)
    start = time.perf_counter()
    protocol = PerplexityProtocol("austen:emma", 512, max_tokens, 4)
    calibration = CalibrationSpec("austen:pride", calib_samples, calib_seqlen, 0)
    s = api.open_study(
        model,
        study,
        protocol,
        calibration,
        store,
        cache=not no_cache,
        placement=placement,
        steps=LM_PLAN.pair,  # the heaviest methods of the demo
    )
    studies = [(s, LM_PLAN, *_order_study(s, LM_PLAN, out, ""))]
    _export_best(s, studies[0][3], out)
    if vision:
        v = api.open_study(
            vision,
            f"{study}-vision",
            vision_protocol,
            store=s.store,
            cache=not no_cache,
            placement=placement,
        )
        found = _order_study(v, VISION_PLAN, out / "vision", f"{vision}: ")
        studies.append((v, VISION_PLAN, *found))
    console.rule("summary")
    for args in studies:
        _summary(*args)
    elapsed = time.perf_counter() - start
    console.print(f"run store: {s.store.path}; demo finished in {elapsed:.0f} s")
