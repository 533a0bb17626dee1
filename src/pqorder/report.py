"""Reports from the run store: Markdown and HTML, with the sweep plot beside them.

A report is a list of blocks (heading, text, table, image) rendered twice, so both formats
always say the same thing.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from pqorder.analysis.rotation_study import RotationStudy, plot_rotation
from pqorder.analysis.sweep import SweepPoint, SweepResult, plot_sweep
from pqorder.errors import PqorderError
from pqorder.models.loading import CAVEATS
from pqorder.models.zoo import trained_record
from pqorder.pipeline import label, order_label
from pqorder.store import RunStore, m_text


@dataclass
class Block:
    kind: str  # "h2", "p", "list", "table", "image"
    content: object


def _fmt(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.1f}"
    return str(value)


def _latest(analyses: list[dict], kind: str) -> dict | None:
    found = [a["payload"] for a in analyses if a["kind"] == kind]
    return found[-1] if found else None


def _recommend_blocks(rec: dict) -> list[Block]:
    rows = [
        [
            label(m["step"]),
            m["family"],
            m["granularity"],
            m["value"],
            m["cer"] if m["cer"] is not None else m["cer_status"],
        ]
        for m in rec["methods"]
    ]
    blocks = [
        Block("h2", "Intensity and recommendation"),
        Block(
            "p",
            f"Dense {rec['metric_name']} {_fmt(rec['dense_value'])}. Recommended order "
            f"(weaker first): **{order_label(rec['order'])}**; confidence "
            f"{rec['confidence']} (CER gaps {', '.join(_fmt(g) for g in rec['cer_gaps'])}).",
        ),
        Block(
            "table",
            (["method", "family", "granularity", f"{rec['metric_name']} alone", "CER C*"], rows),
        ),
    ]
    if rec["warnings"]:
        blocks += [Block("p", "Warnings:"), Block("list", rec["warnings"])]
    return blocks


def _search_blocks(res: dict, metric: str) -> list[Block]:
    rows = [[order_label(o["order"]), o["value"], o["status"]] for o in res["orders"]]
    spend = res["spend"]
    verdict = {True: "yes", False: "no", None: "not checked"}[res["pih_was_best"]]
    return [
        Block("h2", "Order search"),
        Block("table", (["order", metric, "status"], rows)),
        Block(
            "p",
            f"Best order: **{order_label(res['best'])}**. Was the PIH recommendation "
            f"the best? {verdict}. Steps applied {spend['applied_steps']} vs "
            f"{spend['naive_steps']} without reuse "
            f"({spend['cache_hits']} prefix-cache hits, {spend['stored_hits']} stored runs).",
        ),
        Block(
            "table",
            (["pair", f"A ({m_text(metric)})"], [[k, v] for k, v in res["advantages"].items()]),
        ),
    ]


def _sweep_blocks(sweep: dict, folder: Path) -> list[Block]:
    points = [SweepPoint(**{k: v for k, v in p.items() if k != "cer_gap"}) for p in sweep["points"]]
    metric = sweep.get("metric", "perplexity")
    image = plot_sweep(SweepResult(points, sweep["rho"], metric), folder / "sweep.png")
    rows = [
        [
            p.prune,
            p.ratio,
            p.bits,
            p.value_prune_then_quant,
            p.value_quant_then_prune,
            p.cer_gap,
            p.advantage_q_first,
            "yes" if p.collapse else "",
        ]
        for p in points
    ]
    rho = ", ".join(f"{k}: {_fmt(v)}" for k, v in sweep["rho"].items())
    return [
        Block("h2", "Sweep: order advantage vs. CER gap"),
        Block("p", f"Spearman ρ between A(Q→P) and C*_P − C_Q — {rho}."),
        Block("image", image.name),
        Block(
            "table",
            (
                [
                    *("pruner", "ratio", "bits", f"P→Q {metric}", f"Q→P {metric}"),
                    *("CER gap", "A(Q→P)", "collapse"),
                ],
                rows,
            ),
        ),
    ]


def _rotation_blocks(items: list[dict], folder: Path) -> list[Block]:
    """Every stored rotation study of the study, merged (the latest point per pruner/ratio)."""
    studies = [RotationStudy.from_dict(i) for i in items]
    points = {(p.pruner, p.ratio): p for s in studies for p in s.points}
    merged = RotationStudy(
        studies[-1].rotation,
        studies[-1].dense_ppl,
        studies[-1].rotated_ppl,
        sorted(points.values(), key=lambda p: (p.pruner, p.ratio)),
    )
    image = plot_rotation(merged, folder / "rotation.png")
    rows = [[p.pruner, p.ratio, p.ppl_plain, p.ppl_rotated, p.factor] for p in merged.points]
    return [
        Block("h2", "Pruning after rotation"),
        Block(
            "p",
            f"Perplexity of each pruner alone and after {label(merged.rotation)} "
            f"(dense {_fmt(merged.dense_ppl)}, rotated {_fmt(merged.rotated_ppl)}: the rotation "
            f"alone keeps the function). The paper (LLaMA-3-8B, SparseGPT): 30% 6.894 → 8.504, "
            f"40% 8.477 → 98.213; SLEB 40% 92.848 → 93.260.",
        ),
        Block("image", image.name),
        Block("table", (["pruner", "ratio", "plain", "after rotation", "×"], rows)),
    ]


def _interference_blocks(items: list[dict]) -> list[Block]:
    rows = [
        [
            label(i["prune"]),
            label(i["quant"]),
            i["measured"],
            i["predicted"],
            i["interference"],
            i["kappa"],
            f"{i['order_dependent_units']}/{i['units']}",
        ]
        for i in items
    ]
    return [
        Block("h2", "Order-dependent units and interference"),
        Block(
            "p",
            "A predicted from per-unit output errors on dense calibration activations "
            "(κ fitted on each method alone); Δ = measured − predicted.",
        ),
        Block(
            "table",
            (["P", "Q", "A measured", "A predicted", "Δ", "κ", "order-dependent units"], rows),
        ),
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
                f"metric M = {m_text(metric)} (higher is better); "
                "A(f1→f2) = M(f1 then f2) − M(f2 then f1)",
            ],
        ),
    ]
    if first.model in CAVEATS:
        blocks.append(Block("p", f"Caveat: {CAVEATS[first.model]}"))
    if record := trained_record(first.model):
        blocks.append(Block("p", f"Built-in vision model trained by pqorder: {record}"))
    if rec := _latest(analyses, "recommend"):
        blocks += _recommend_blocks(rec)
    if res := _latest(analyses, "search"):
        blocks += _search_blocks(res, metric)
    if sweep := _latest(analyses, "sweep"):
        blocks += _sweep_blocks(sweep, folder)
    if items := [a["payload"] for a in analyses if a["kind"] == "interference"]:
        blocks += _interference_blocks(items)
    if items := [a["payload"] for a in analyses if a["kind"] == "rotation"]:
        blocks += _rotation_blocks(items, folder)
    failed = [r for r in runs if not r.ok]
    rows = [[r.id, r.pipeline, r.value, r.status, round(r.seconds, 1)] for r in runs]
    blocks += [
        Block("h2", f"All runs ({len(runs)}, {len(failed)} failed)"),
        Block("table", (["id", "pipeline", metric, "status", "seconds"], rows)),
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
            header, rows = b.content
            out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows] + [""]
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
            header, rows = b.content
            head = "".join(f"<th>{e(h)}</th>" for h in header)
            body = "".join(
                "<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows
            )
            out.append(f"<table><tr>{head}</tr>{body}</table>")
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
