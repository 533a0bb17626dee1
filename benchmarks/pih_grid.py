"""The validation grid: does "weaker first" pick the better order on the paper's own pairs?

Both orders of every (pruner, ratio) × (quantizer, bits) point, through a study whose run store
makes the grid resumable (an interrupted run picks up where it stopped; each single-method
prefix is computed once and reused by the prefix cache). Then, per pair family and overall:
the hit rate of weaker-first, of "always prune first" and of "always quantize first", and
Spearman ρ(A, CER gap), on non-collapse points (``pqorder.analysis.validation``).

Parts (``--parts``, comma-separated):
- ``lm``: SparseGPT and Wanda at 10–50 % × RTN and GPTQ at 4/5/6/8 bits, group 128 and per
  output channel (160 points);
- ``structured``: SLEB and structured heads / channels at 10 and 20 % × the same four
  quantizers at 4 and 8 bits (48 points);
- ``vision``: fmnist-cnn, SparseGPT, magnitude and filters at 30–50 % × per-channel RTN and
  GPTQ at 3/4/5/8 bits (72 points; top-1 on the 10,000 test images).

Protocol (LM parts): calibration ``--calib-samples`` × ``--calib-seqlen`` tokens of Pride and
Prejudice, seed 0; perplexity on the first ``--max-tokens`` tokens of Emma in 512-token windows
(batch 4). The defaults (8 × 128 calibration tokens, 2,048 evaluation tokens) are chosen so
that the 160-point ``lm`` part runs in about two hours on 2 CPU cores with ``--executor process
--workers 2`` (a SparseGPT or GPTQ pass over SmolLM2 ≈ 35 s on one thread, an evaluation ≈ 10 s;
at 16 × 256 and 4,096 tokens it was ≈ 4 h). 1,024 tokens give down_proj (1,536 inputs) a
rank-deficient Hessian, which the solvers' dampening handles; the paper-protocol numbers need
``--calib-samples 128 --calib-seqlen 2048`` and a GPU. Vision: 128 training images, seed 0.
Predictor (``pqorder.analysis.predictor``): for every point whose methods both work unit by unit,
the sweep computes the local errors of both orders on the units of every ``--every``-th block
(one calibration pass per part, then the unit solves, while the workers run the orders; each
quantizer's finished sweep is saved in the store, so a rerun reads it back), scored as the
rule "local errors", then the predictor's leave-one-family-out evaluation and its calibration.
``--write-prior`` saves the fit of each model kind (on its own parts) into the prior ``pqorder
recommend`` ships with (its source names the setting the points were measured under).
Run: python benchmarks/pih_grid.py [--parts lm,structured,vision] [--store runs.db]
[--executor process|ray --workers N [--ray-address host:port]] (jobs in workers, see README);
``--from-json lm.json vision.json [--write-prior]`` scores and fits the points of earlier runs
together (e.g. parts run in different sessions), ``--saved`` the sweeps a store holds so far
(a grid still running or stopped), without running anything.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from pqorder.analysis.predictor import PredictorFit
    from pqorder.data.calibration import CalibrationSpec
    from pqorder.eval import Evaluator
    from pqorder.store import RunStore

SAVED = "pih-grid sweep"  # analysis kind: one quantizer's finished sweep, read back on a rerun
QUANTIZERS = ("rtn:group=128", "rtn:group=0", "gptq:group=128", "gptq:group=0")
PARTS = {  # part → (model, pruners, ratios, quantizers, bits)
    "lm": (
        "smollm2-135m",
        ("sparsegpt", "wanda"),
        (0.1, 0.2, 0.3, 0.4, 0.5),
        QUANTIZERS,
        (4, 5, 6, 8),
    ),
    "structured": (
        "smollm2-135m",
        ("sleb", "structured:target=heads", "structured:target=channels"),
        (0.1, 0.2),
        QUANTIZERS,
        (4, 8),
    ),
    "vision": (
        "fmnist-cnn",
        ("sparsegpt", "magnitude", "filters"),
        (0.3, 0.4, 0.5),
        ("rtn:group=0", "gptq:group=0"),
        (3, 4, 5, 8),
    ),
}


def part_setting(part: str, args: argparse.Namespace) -> tuple[Evaluator, CalibrationSpec]:
    """The protocol and calibration ``part`` is measured under with these flags (the vision
    part: its model kind's defaults)."""
    from pqorder.data.calibration import CalibrationSpec
    from pqorder.eval.perplexity import PerplexityProtocol
    from pqorder.eval.select import calibration_for, protocol_for
    from pqorder.models.loading import model_kind

    model = PARTS[part][0]
    if model_kind(model) == "vision":
        return protocol_for(model), calibration_for(model)
    protocol = PerplexityProtocol("austen:emma", 512, args.max_tokens, 4)
    return protocol, CalibrationSpec("austen:pride", args.calib_samples, args.calib_seqlen, 0)


def sweep_key(quantizer: str, part: str, args: argparse.Namespace) -> str:
    """What a saved sweep is found by: quantizer, ``--every`` and the part's setting."""
    protocol, calibration = part_setting(part, args)
    return f"{quantizer} every={args.every} {protocol} {calibration}"


def setting_label(part: str, args: argparse.Namespace) -> str:
    """The part's setting in a line, for the source of a prior fitted on it."""
    protocol, c = part_setting(part, args)
    return f"calibration {c.n_samples}x{c.seqlen} of {c.source}, seed {c.seed}; {protocol}"


def run_part(part: str, args: argparse.Namespace) -> list:
    """Every point of one part, in the study ``pih-<part>`` of the store (resumed if there)."""
    from pqorder import api
    from pqorder.analysis.sweep import SweepResult, run_sweep

    model, pruners, ratios, quantizers, bits = PARTS[part]
    study = api.open_study(
        model,
        f"pih-{part}",
        *part_setting(part, args),
        args.store,
        progress=not args.quiet,
        executor=args.executor,
        workers=args.workers,
        ray_address=args.ray_address,
    )
    saved = saved_sweeps(study.store, part)
    points = []
    for quantizer in quantizers:
        start = time.perf_counter()
        key = sweep_key(quantizer, part, args)
        if key in saved:  # its runs are stored too; this keeps the local errors' solves
            result = SweepResult.from_dict(saved[key])
            result.points = with_shares(result.points, study.store, part, args)
        else:
            result = run_sweep(
                study, pruners, ratios, quantizer, bits, progress=not args.quiet, every=args.every
            )
            study.store.put_analysis(study.name, SAVED, {"key": key, "sweep": result.to_dict()})
        points += result.points
        spend = study.spend
        print(
            f"{part} × {quantizer}: {len(result.points)} points in "
            f"{time.perf_counter() - start:.0f} s (stored runs reused {spend.stored_hits})",
            flush=True,
        )
    study.executor.close()  # the next part loads another model
    return points


def saved_sweeps(store: RunStore, part: str) -> dict[str, dict]:
    """The finished quantizer sweeps of ``part`` saved in ``store``, by their key (quantizer,
    ``--every``, protocol, calibration)."""
    return {
        a["payload"]["key"]: a["payload"]["sweep"]
        for a in store.analyses(f"pih-{part}")
        if a["kind"] == SAVED
    }


def with_shares(points: list, store: RunStore, part: str, args: argparse.Namespace) -> list:
    """The points, those of sweeps saved before the quantizer's share was recorded given it
    from the store's runs of the dense model and of the quantizer alone (same setting)."""
    from dataclasses import replace

    from pqorder.analysis.intensity import quant_share
    from pqorder.eval import protocol_dict

    protocol, calibration = part_setting(part, args)
    alone = {
        r.pipeline: r
        for r in store.query(model=PARTS[part][0], status="ok")
        if r.n_steps <= 1
        and r.protocol == protocol_dict(protocol)
        and r.calibration in (None, asdict(calibration))
    }
    return [
        replace(p, quant_share=quant_share(alone["dense"], alone[p.quant], p.scale))
        if p.quant_share is None and p.quant in alone
        else p
        for p in points
    ]


def saved_points(store: Path, part: str, args: argparse.Namespace) -> list:
    """The points of every quantizer sweep of ``part`` saved in ``store`` so far under this
    setting (a grid still running, or stopped, scored on what it has finished)."""
    from pqorder.analysis.sweep import SweepResult
    from pqorder.store import RunStore

    runs = RunStore(store)
    sweeps = saved_sweeps(runs, part)
    keys = [sweep_key(q, part, args) for q in PARTS[part][3]]
    points = [p for k in keys if k in sweeps for p in SweepResult.from_dict(sweeps[k]).points]
    return with_shares(points, runs, part, args)


def kinds(by_part: dict[str, list]) -> dict[str, list[str]]:
    """The parts of each model kind (the prior is fitted per kind)."""
    from pqorder.models.loading import model_kind

    found: dict[str, list[str]] = {}
    for part in by_part:
        found.setdefault(model_kind(PARTS[part][0]), []).append(part)
    return found


def load_points(path: Path) -> tuple[dict[str, list], dict[str, str]]:
    """The sweep points per part that an earlier run of this script wrote to its JSON file,
    and the setting each part was measured under."""
    from pqorder.analysis.sweep import SweepPoint

    raw = json.loads(path.read_text())
    if "parts" not in raw:
        raise SystemExit(f"{path}: no points per part (written by an older pih_grid); rerun it")
    points = {part: [SweepPoint(**p) for p in pts] for part, pts in raw["parts"].items()}
    settings = raw.get("settings", {})
    return points, {part: settings.get(part, "setting not recorded") for part in points}


def described(fit: PredictorFit) -> str:
    """A fit's numbers in a line."""
    return (
        f"r = {fit.slope:.4g}·x {fit.share_slope:+.4g}·q, σ {fit.sigma:.4g}; "
        f"prune first better at {fit.prune_first:.1%} of its pairs"
    )


def plot(points: list, path: Path) -> None:
    """A(Q→P) against the CER gap, one colour per pair family."""
    from pqorder.analysis.validation import family_of, usable
    from pqorder.plotting import figure

    with figure(path, (7.5, 5)) as ax:
        families = sorted({family_of(p) for p in points})
        for family in families:
            kept = [p for p in points if usable(p) and family_of(p) == family]
            ax.scatter(
                [p.cer_gap for p in kept], [p.advantage_q_first for p in kept], s=14, label=family
            )
        _quadrants(ax)
        ax.set_title("weaker first is right in the top-right and bottom-left quadrants")
        ax.legend(fontsize=7, ncol=2)


def plot_families(points: list, path: Path) -> None:
    """The paper's figure per pair family: A(Q→P) against the CER gap, one curve per pruning
    ratio across the bit-widths; collapse points drawn as grey crosses."""
    from pqorder.analysis.validation import family_of
    from pqorder.plotting import panels

    families = sorted({family_of(p) for p in points})
    with panels(path, len(families), 4, (4.2, 3.4)) as axes:
        for ax, family in zip(axes, families, strict=True):
            mine = [
                p
                for p in points
                if family_of(p) == family
                and p.cer_gap is not None
                and p.advantage_q_first is not None
            ]
            for ratio in sorted({p.ratio for p in mine}):
                line = sorted(
                    (p for p in mine if p.ratio == ratio and not p.collapse),
                    key=lambda p: p.cer_gap,
                )
                ax.plot(
                    [p.cer_gap for p in line],
                    [p.advantage_q_first for p in line],
                    "o-",
                    ms=3,
                    label=f"{ratio:g}",
                )
            lost = [p for p in mine if p.collapse]
            ax.scatter(
                [p.cer_gap for p in lost],
                [p.advantage_q_first for p in lost],
                marker="x",
                color="grey",
                s=14,
            )
            _quadrants(ax)
            ax.set_title(family, fontsize=9)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=6, title="ratio", title_fontsize=6)


def _quadrants(ax: Axes) -> None:
    """Zero lines and the axis labels shared by both plots."""
    ax.axhline(0, color="grey", lw=0.8)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_xlabel("CER gap C*_P − C_Q  (> 0: pruning is stronger)")
    ax.set_ylabel("A(Q→P)  (> 0: quantize first was better)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="lm,structured,vision")
    parser.add_argument("--store", type=Path, default=Path("pih-grid.db"))
    parser.add_argument("--calib-samples", type=int, default=8)
    parser.add_argument("--calib-seqlen", type=int, default=128)
    parser.add_argument("--max-tokens", type=int, default=2048)
    parser.add_argument("--json", type=Path, default=Path("pih-grid.json"))
    parser.add_argument("--plot", type=Path, default=Path("pih-grid.png"))
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--every", type=int, default=5, help="local errors on every k-th block")
    parser.add_argument("--write-prior", action="store_true")
    parser.add_argument("--executor", choices=("local", "process", "ray"), default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--ray-address", default=None)
    scored = parser.add_mutually_exclusive_group()
    scored.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        default=None,
        help="score and fit the points of earlier runs' JSON files instead of running parts",
    )
    scored.add_argument(
        "--saved",
        action="store_true",
        help="score and fit the sweeps of --parts already saved in --store, running nothing",
    )
    args = parser.parse_args()
    parts = args.parts.split(",")
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; use {', '.join(PARTS)}")
    missing = [str(f) for f in args.from_json or () if not f.is_file()]
    if missing:
        parser.error(f"no such file: {', '.join(missing)}")

    from pqorder.analysis.predictor import (
        PRIOR,
        calibration_table,
        fit,
        held_out_table,
        leave_one_family_out,
        magnitude_table,
        plot_predicted,
        sweep_evidence,
    )
    from pqorder.analysis.validation import score_rules, scores_table

    start = time.perf_counter()
    by_part: dict[str, list] = {}
    settings: dict[str, set[str]] = {}
    if args.from_json:
        for f in args.from_json:
            points, labels = load_points(f)
            for part, pts in points.items():
                by_part.setdefault(part, []).extend(pts)
                settings.setdefault(part, set()).add(labels[part])
        source = "pih_grid " + " + ".join(f.stem for f in args.from_json)
    else:
        if args.saved and not args.store.is_file():
            parser.error(f"no such store: {args.store}")
        for part in parts:
            by_part[part] = (
                saved_points(args.store, part, args) if args.saved else run_part(part, args)
            )
            settings[part] = {setting_label(part, args)}
            if args.saved and not by_part[part]:
                parser.error(
                    f"{args.store} holds no finished sweep of part {part} under "
                    f"{setting_label(part, args)}, --every {args.every}"
                )
        source = f"pih_grid {args.parts}" + (
            f", saved sweeps of {args.store.name}" if args.saved else ""
        )
    points = [p for pts in by_part.values() for p in pts]
    evidence = sweep_evidence(points)
    scores = score_rules(points)
    table = scores_table(scores)
    print(f"\n{table.title} (grid took {time.perf_counter() - start:.0f} s)\n")
    print("\n".join(table.markdown()))
    held_out = leave_one_family_out(evidence) if len(evidence) >= 3 else []
    if not held_out:  # model-level methods only (block removal, coupled structures)
        print(f"\nno predictor fit: {len(evidence)} points have local errors")
    else:
        for t in (held_out_table(held_out), calibration_table(held_out), magnitude_table(held_out)):
            print(f"\n{t.title}\n")
            print("\n".join(t.markdown()))
        fitted = fit(evidence, source)
        print(f"fit on all {fitted.points} points: {described(fitted)}")
        plot_predicted(evidence, fitted, args.plot.with_name(f"{args.plot.stem}-predicted.png"))
    for kind, kind_parts in kinds(by_part).items():  # recommend reads the fit of its model kind
        used = [part for part in kind_parts if sweep_evidence(by_part[part])]
        mine = sweep_evidence([p for part in used for p in by_part[part]])
        if len(mine) < 3:
            continue
        measured = "; ".join(sorted(set().union(*(settings[part] for part in used))))
        own = fit(mine, f"pih_grid {'+'.join(used)} ({measured})")
        print(f"fit on the {len(mine)} {kind} points: {described(own)}")
        if args.write_prior:
            print(f"prior for {kind} models: {own.save(PRIOR, kind)}")
    args.json.write_text(
        json.dumps(
            {
                "parts": {part: [asdict(p) for p in pts] for part, pts in by_part.items()},
                "settings": {part: "; ".join(sorted(labels)) for part, labels in settings.items()},
                "scores": [asdict(s) for s in scores],
                "evidence": [asdict(e) for e in evidence],
                "held_out": [asdict(h) for h in held_out],
            }
        )
    )
    plot(points, args.plot)
    families = args.plot.with_name(f"{args.plot.stem}-families.png")
    plot_families(points, families)
    print(f"points and scores: {args.json}; plots: {args.plot}, {families}")


if __name__ == "__main__":
    main()
