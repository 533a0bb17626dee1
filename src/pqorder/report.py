"""Reports from the run store: Markdown and HTML, with the sweep plot beside them.

A report is a list of blocks (heading, text, table, image) rendered twice, so both formats
always say the same thing. Stored analyses are read back as their result objects, whose
tables (``pqorder.tables``) are the ones the CLI prints.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, replace
from pathlib import Path

from pqorder.analysis.lora_study import LoraStudy, plot_lora
from pqorder.analysis.mpq import MPQStudy, plot_mpq
from pqorder.analysis.pairs import PairGrid
from pqorder.analysis.predictor import PredictorFit, plot_predicted, sweep_evidence
from pqorder.analysis.recommend import Recommendation
from pqorder.analysis.rotation_study import RotationStudy, plot_rotation
from pqorder.analysis.search import SearchResult
from pqorder.analysis.share import ShareStudy, plot_share
from pqorder.analysis.stages import StagesStudy, plot_stages
from pqorder.analysis.sweep import SweepResult, plot_sweep
from pqorder.analysis.units import InterferenceResult, interference_table
from pqorder.analysis.validation import score_rules, scores_table
from pqorder.errors import PqorderError
from pqorder.models.loading import CAVEATS, model_kind
from pqorder.models.zoo import trained_record
from pqorder.store import RunStore, m_text, runs_table
from pqorder.tables import cell


@dataclass
class Block:
    kind: str  # "h2", "p", "list", "table", "image"
    content: object  # text, a list of items, an image file name, or a Table


def _latest(analyses: list[dict], kind: str) -> dict | None:
    found = [a["payload"] for a in analyses if a["kind"] == kind]
    return found[-1] if found else None


def _recommend_blocks(rec: Recommendation) -> list[Block]:
    dense = rec.intensity.dense
    gaps = f"(CER gaps {', '.join(cell(g) for g in rec.cer_gaps)})"
    if rec.verdict:
        answer = (
            f"Recommended order: **{rec.order_label}** ({rec.verdict}). Weaker first: "
            f"{rec.labels(rec.rule_order)}, confidence {rec.confidence} {gaps}."
        )
    else:  # stored before the predictor: weaker first was the answer
        answer = (
            f"Recommended order (weaker first): **{rec.order_label}**; confidence "
            f"{rec.confidence} {gaps}."
        )
    blocks = [
        Block("h2", "Intensity and recommendation"),
        Block("p", f"Dense {dense.metric_name} {cell(dense.value)}. {answer}"),
        Block("table", rec.table()),
    ]
    if rec.calls:
        blocks.append(Block("table", rec.prediction_table()))
    if rec.warnings:
        blocks += [Block("p", "Warnings:"), Block("list", rec.warnings)]
    return blocks


def _search_blocks(res: SearchResult) -> list[Block]:
    spend = res.spend
    verdict = {True: "yes", False: "no", None: "not checked"}[res.pih_was_best]
    return [
        Block("h2", "Order search"),
        Block("table", res.table()),
        Block(
            "p",
            f"Best order: **{res.order_label(res.best)}**. Was the PIH recommendation "
            f"the best? {verdict}. Steps applied {spend.applied_steps} vs "
            f"{res.naive_steps} without reuse "
            f"({spend.cache_hits} prefix-cache hits, {spend.stored_hits} stored runs).",
        ),
        Block("table", res.advantage_table()),
    ]


def _sweep_blocks(sweep: SweepResult, folder: Path, kind: str) -> list[Block]:
    image = plot_sweep(sweep, folder / "sweep.png")
    rho = ", ".join(f"{k}: {cell(v)}" for k, v in sweep.rho.items())
    blocks = [
        Block("h2", "Sweep: order advantage vs. CER gap"),
        Block("p", f"Spearman ρ between A(Q→P) and C*_P − C_Q — {rho}."),
        Block("image", image.name),
        Block("table", sweep.table()),
        Block("table", scores_table(score_rules(sweep.points))),
    ]
    evidence = sweep_evidence(sweep.points)
    if evidence and (prior := PredictorFit.load(kind=kind)) is not None:
        scatter = plot_predicted(evidence, prior, folder / "sweep-predicted.png")
        blocks += [
            Block("p", f"Predicted against measured A(Q→P) (predictor fit: {prior.source})."),
            Block("image", scatter.name),
        ]
    return blocks


def _grid_blocks(grid: PairGrid) -> list[Block]:
    return [
        Block("h2", "Pair grid: both orders of every pruning × quantization pair"),
        Block("p", f"A(Q→P) = M(Q→P) − M(P→Q), M = {grid.m_text}; dense {cell(grid.dense)}."),
        Block("table", grid.table()),
    ]


def _rotation_blocks(studies: list[RotationStudy], folder: Path) -> list[Block]:
    """Every stored rotation study of the study, merged (the latest point per pruner/ratio)."""
    points = {(p.pruner, p.ratio): p for s in studies for p in s.points}
    merged = replace(studies[-1], points=sorted(points.values(), key=lambda p: (p.pruner, p.ratio)))
    image = plot_rotation(merged, folder / "rotation.png")
    return [
        Block("h2", "Pruning after rotation"),
        Block(
            "p",
            f"Perplexity of each pruner alone and after {merged.rotation_label} "
            f"(dense {cell(merged.dense_ppl)}, rotated {cell(merged.rotated_ppl)}: the rotation "
            f"alone keeps the function). The paper (LLaMA-3-8B, SparseGPT): 30% 6.894 → 8.504, "
            f"40% 8.477 → 98.213; SLEB 40% 92.848 → 93.260.",
        ),
        Block("image", image.name),
        Block("table", merged.table()),
    ]


def _stages_blocks(result: StagesStudy, folder: Path) -> list[Block]:
    image = plot_stages(result, folder / "stages.png")
    return [
        Block("h2", "Multi-stage pruning"),
        Block(
            "p",
            f"{result.total:.0%} of the weights pruned in two stages around "
            f"{result.middle_label}, from all before to all after; a stage's ratio is the "
            "model's sparsity after it (earlier zeros stay zero). The paper (LLaMA-3-8B, "
            f"SparseGPT around QuaRot) finds that the stronger stage later wins. Here: "
            f"{result.summary()}.",
        ),
        Block("image", image.name),
        Block("table", result.table()),
        Block("table", result.mirror_table()),
    ]


def _mpq_blocks(result: MPQStudy, folder: Path) -> list[Block]:
    image = plot_mpq(result, folder / "mpq.png")
    cost = "" if result.score_seconds is None else f" (scoring walk {result.score_seconds:.1f} s)"
    return [
        Block("h2", "Mixed precision as an order"),
        Block(
            "p",
            f"Per-unit bit-widths from {result.step_label} at each average budget, allocated by "
            f"Hessian-weighted RTN error{cost}; progressive quantizes the bit groups from high "
            "to low, regressive from low to high, once all together. G = M(high half alone) − "
            "M(low half alone). The paper finds that progressive wins, more so as compression "
            f"grows, with no interference. Here: {result.summary()}.",
        ),
        Block("image", image.name),
        Block("table", result.table()),
        Block("table", result.interference_table()),
        Block("table", result.runs_table()),
    ]


def _lora_blocks(result: LoraStudy, folder: Path) -> list[Block]:
    image = plot_lora(result, folder / "lora.png")
    return [
        Block("h2", "LoRA recovery in the order"),
        Block(
            "p",
            f"{result.pruner} at each ratio and {result.quant}, in both orders, with "
            f"{result.lora} last or between them. A merged LoRA update is masked (zeros stay "
            "zero) and rounded onto the existing grid, so after quantization most of it is "
            "lost: the table shows the share kept. The paper finds that the stronger-later "
            f"pattern survives recovery. Here: {result.summary()}.",
        ),
        Block("image", image.name),
        Block("table", result.table()),
        Block("table", result.advantage_table()),
    ]


def _share_blocks(result: ShareStudy, folder: Path) -> list[Block]:
    image = plot_share(result, folder / "share.png")
    return [
        Block("h2", "Parameter sharing and pruning"),
        Block(
            "p",
            f"{result.share_step.split(':')[0]} (Basis Sharing: adjacent blocks share a whitened "
            f"SVD basis) and {result.pruner} in both orders at each pair of ratios, each alone "
            "for the intensity gap G. Pruning after sharing prunes the factors; sharing after "
            "pruning factors the pruned weights (their zeros do not survive). The paper finds "
            f"that the stronger method later wins. Here: {result.summary()}.",
        ),
        Block("image", image.name),
        Block("table", result.table()),
    ]


def _interference_blocks(items: list[InterferenceResult]) -> list[Block]:
    return [
        Block("h2", "Order-dependent units and interference"),
        Block(
            "p",
            "A predicted from per-unit output errors on dense calibration activations "
            "(κ fitted on each method alone); Δ = measured − predicted.",
        ),
        Block("table", interference_table(items)),
    ]


def build_blocks(store: RunStore, study: str, folder: Path) -> list[Block]:
    runs = store.query(study=study)
    if not runs:
        raise PqorderError(f"no runs stored for study '{study}' in {store.path}")
    analyses = store.analyses(study)
    first = runs[0]
    metric = first.metric_name
    calibration = next((r.calibration for r in runs if r.calibration), None)
    blocks = [
        Block("h2", "Protocol"),
        Block(
            "list",
            [
                f"model: {first.model}",
                f"evaluation: {first.protocol}",
                f"calibration: {calibration or 'none needed'}",
                f"metric M = {m_text(metric, first.direction)} (higher is better); "
                "A(f1→f2) = M(f1 then f2) − M(f2 then f1)",
            ],
        ),
    ]
    if first.model in CAVEATS:
        blocks.append(Block("p", f"Caveat: {CAVEATS[first.model]}"))
    if record := trained_record(first.model):
        blocks.append(Block("p", f"Built-in vision model trained by pqorder: {record}"))
    if rec := _latest(analyses, "recommend"):
        blocks += _recommend_blocks(Recommendation.from_dict(rec))
    if res := _latest(analyses, "search"):  # format-1 searches did not name their metric
        blocks += _search_blocks(SearchResult.from_dict(res, metric_name=metric))
    if sweep := _latest(analyses, "sweep"):
        blocks += _sweep_blocks(SweepResult.from_dict(sweep), folder, model_kind(first.model))
    if grid := _latest(analyses, "grid"):
        blocks += _grid_blocks(PairGrid.from_dict(grid))
    if items := [a["payload"] for a in analyses if a["kind"] == "interference"]:
        blocks += _interference_blocks([InterferenceResult.from_dict(i) for i in items])
    if items := [a["payload"] for a in analyses if a["kind"] == "rotation"]:
        blocks += _rotation_blocks([RotationStudy.from_dict(i) for i in items], folder)
    if stages := _latest(analyses, "stages"):
        blocks += _stages_blocks(StagesStudy.from_dict(stages), folder)
    if mpq := _latest(analyses, "mpq"):
        blocks += _mpq_blocks(MPQStudy.from_dict(mpq), folder)
    if lora := _latest(analyses, "lora"):
        blocks += _lora_blocks(LoraStudy.from_dict(lora), folder)
    if share := _latest(analyses, "share"):
        blocks += _share_blocks(ShareStudy.from_dict(share), folder)
    failed = [r for r in runs if not r.ok]
    blocks += [
        Block("h2", f"All runs ({len(runs)}, {len(failed)} failed)"),
        Block("table", runs_table(runs, metric)),
    ]
    blocks += (
        [Block("list", [f"run {r.id} {r.pipeline}: {r.error}" for r in failed])] if failed else []
    )
    return blocks


def to_markdown(title: str, blocks: list[Block]) -> str:
    out = [f"# {title}", ""]
    for b in blocks:
        if b.kind == "h2":
            out += [f"## {b.content}", ""]
        elif b.kind == "p":
            out += [str(b.content), ""]
        elif b.kind == "list":
            out += [f"- {item}" for item in b.content] + [""]
        elif b.kind == "image":
            out += [f"![{b.content}]({b.content})", ""]
        else:
            out += b.content.markdown()
    return "\n".join(out)


def to_html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = [
        f"<!doctype html><meta charset='utf-8'><title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #bbb;padding:2px 6px}</style>",
        f"<h1>{e(title)}</h1>",
    ]
    for b in blocks:
        if b.kind == "h2":
            out.append(f"<h2>{e(str(b.content))}</h2>")
        elif b.kind == "p":
            text = e(str(b.content))
            while "**" in text:
                text = text.replace("**", "<b>", 1).replace("**", "</b>", 1)
            out.append(f"<p>{text}</p>")
        elif b.kind == "list":
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b.content) + "</ul>")
        elif b.kind == "image":
            out.append(f"<img src='{e(str(b.content))}' alt='plot'>")
        else:
            out.append(b.content.html())
    return "\n".join(out)


def write_report(store: RunStore, study: str, folder: Path) -> tuple[Path, Path]:
    """Write report.md, report.html and the plots into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    blocks = build_blocks(store, study, folder)
    title = f"pqorder report: {study}"
    md, page = folder / "report.md", folder / "report.html"
    md.write_text(to_markdown(title, blocks))
    page.write_text(to_html(title, blocks))
    return md, page
