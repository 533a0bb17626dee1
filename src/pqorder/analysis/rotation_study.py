"""The rotation-impact study: how much worse pruning gets after a QuaRot rotation.

For each pruner and ratio, perplexity of pruning the dense model and of pruning after
``rotate`` (the same function before pruning, up to float rounding), stored as ordinary runs.
The paper reports, on LLaMA-3-8B with SparseGPT, 6.894 → 8.504 at 30% and 8.477 → 98.213 at
40%, while SLEB block removal barely changes (92.848 → 93.260 at 40%).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pqorder.errors import check_format
from pqorder.pipeline import label, parse_step
from pqorder.plotting import figure
from pqorder.study import Study
from pqorder.tables import Table

PRUNERS = ("sparsegpt", "sleb:samples=8")
RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4)
FORMAT = 2  # version of RotationStudy.to_dict (1: no rotation label; read as well)


@dataclass
class RotationPoint:
    pruner: str
    ratio: float
    ppl_plain: float | None
    ppl_rotated: float | None

    @property
    def factor(self) -> float | None:
        """Perplexity with rotation over without (> 1: the rotation hurt the pruning)."""
        if self.ppl_plain is None or self.ppl_rotated is None:
            return None
        return self.ppl_rotated / self.ppl_plain


@dataclass
class RotationStudy:
    rotation: str  # step text
    dense_ppl: float | None
    rotated_ppl: float | None
    points: list[RotationPoint]
    rotation_label: str  # short label of the rotation step

    def table(self) -> Table:
        """Each pruner and ratio without and with the rotation first, and their ratio."""
        rows = tuple((p.pruner, p.ratio, p.ppl_plain, p.ppl_rotated, p.factor) for p in self.points)
        columns = ("pruner", "ratio", "plain", "after rotation", "×")
        return Table("perplexity with/without rotation", columns, rows)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> RotationStudy:
        """Read ``to_dict``'s form or format 1 (the label then comes from the method registry)."""
        if check_format("rotation study", raw.get("format", 1), (1, FORMAT)) == 1:
            rotation_label = label(raw["rotation"])
        else:
            rotation_label = raw["rotation_label"]
        points = [
            RotationPoint(**{k: v for k, v in p.items() if k != "factor"}) for p in raw["points"]
        ]
        return cls(raw["rotation"], raw["dense_ppl"], raw["rotated_ppl"], points, rotation_label)


def run_rotation_study(
    study: Study,
    pruners: Sequence[str] = PRUNERS,
    ratios: Sequence[float] = RATIOS,
    rotation: str = "rotate",
    progress: bool = True,
) -> RotationStudy:
    """Every (pruner, ratio) with and without ``rotation`` first; each run lands in the store.

    ``pruners`` are step texts without the ratio (``sparsegpt``, ``sleb:samples=8``).
    """
    rotate = parse_step(rotation)
    grid = [(p, r) for p in pruners for r in ratios]
    templates = {p: parse_step(p, {"ratio": ratios[0]}) for p in pruners}
    steps = {(p, r): templates[p].with_settings(ratio=r) for p, r in grid}
    for step in steps.values():  # every setting is valid before any work
        study.check((rotate, step))
    study.prefetch([(), (rotate,), *(o for s in steps.values() for o in ((s,), (rotate, s)))])
    points = []
    for p, r in tqdm(grid, desc="rotation study", disable=not progress):
        plain = study.evaluate((steps[p, r],))
        rotated = study.evaluate((rotate, steps[p, r]))
        points.append(RotationPoint(steps[p, r].name, r, plain.value, rotated.value))
    return RotationStudy(
        rotate.to_text(),
        study.dense_run().value,
        study.evaluate((rotate,)).value,
        points,
        rotate.label(),
    )


def plot_rotation(result: RotationStudy, path: Path) -> Path:
    """Perplexity vs. ratio per pruner, without and with rotation (log scale)."""
    with figure(path) as ax:
        for i, pruner in enumerate(dict.fromkeys(p.pruner for p in result.points)):
            pts = sorted((p for p in result.points if p.pruner == pruner), key=lambda p: p.ratio)
            for attr, style, tag in (
                ("ppl_plain", "o-", ""),
                ("ppl_rotated", "s--", " after rotation"),
            ):
                xy = [(p.ratio, getattr(p, attr)) for p in pts if getattr(p, attr) is not None]
                if xy:
                    ax.plot(*zip(*xy, strict=True), style, color=f"C{i}", label=f"{pruner}{tag}")
        if result.dense_ppl is not None:
            ax.axhline(result.dense_ppl, color="grey", lw=0.8, ls=":", label="dense")
        ax.set_yscale("log")
        ax.set_xlabel("pruning ratio (weights for SparseGPT, blocks for SLEB)")
        ax.set_ylabel("perplexity")
        ax.set_title("Pruning with and without a prior rotation")
        ax.legend(fontsize=8)
    return path
