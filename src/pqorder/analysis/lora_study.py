"""Where LoRA recovery sits in the order: P→Q→L, Q→P→L, P→L→Q, Q→L→P against P→Q and Q→P.

The paper fine-tunes LoRA adapters (PEFT) after joint compression and reports that the
stronger-later pattern survives recovery. Here, for one pruner P at each of several ratios (the
intensity levels) and one quantizer Q, the study runs both plain orders, recovery last after
each (P→Q→L, Q→P→L) and recovery between the two (P→L→Q, Q→L→P), every run stored and shared
prefixes reused (P→L is the prefix of P→L→Q, Q alone of every Q-first order). The intensity
gap is G = M(Q alone) − M(P alone) (positive: pruning is the stronger method, so the PIH puts it
later); the order advantage of pruning later is A = M(…Q→P…) − M(…P→Q…) in each setting: no
recovery, recovery last, recovery in the middle. "Stronger later" held when A has the sign of
G. A merged lora step keeps masks and grids (``pqorder.methods.lora``), so after quantization
most of its update rounds away: each run keeps the share of the update that survived the grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pqorder.errors import ConfigError, OrderError, check_format
from pqorder.methods.base import Method, step_text
from pqorder.methods.lora import LoRA
from pqorder.pipeline import parse_step
from pqorder.plotting import figure
from pqorder.store import Direction, Measurement, Run, m_text
from pqorder.study import Study
from pqorder.tables import Table, cell

PRUNER = "sparsegpt"
RATIOS = (0.3, 0.5)
QUANT = "rtn:bits=4,group=128"
LORA = "lora"
FORMAT = 1  # version of LoraStudy.to_dict
# order label → positions of P, Q, L in the pipeline
ORDERS = {
    "P→Q": "PQ",
    "Q→P": "QP",
    "P→Q→L": "PQL",
    "Q→P→L": "QPL",
    "P→L→Q": "PLQ",
    "Q→L→P": "QLP",
}
SETTINGS = {  # setting → (pruning first, pruning later)
    "no recovery": ("P→Q", "Q→P"),
    "recovery last": ("P→Q→L", "Q→P→L"),
    "recovery in the middle": ("P→L→Q", "Q→L→P"),
}


@dataclass(frozen=True)
class LoraPoint:
    """One order at one pruning ratio: its value and what its lora step recorded."""

    ratio: float
    order: str  # a key of ORDERS
    pipeline: str  # the run's steps, as short labels
    value: float | None
    update_kept: float | None  # share (norm) of the masked LoRA update left after the grid
    probe_losses: list[float]  # first-window loss: before, trained, masked merge, on the grid
    train_seconds: float | None
    error: str | None = None


@dataclass(frozen=True)
class LoraStudy:
    pruner: str  # the pruner's label without its ratio
    quant: str
    lora: str
    metric: str
    direction: Direction
    dense: float | None
    quant_alone: float | None
    prune_alone: dict[str, float | None]  # by ratio (as text: JSON keys)
    points: list[LoraPoint]

    @property
    def m_text(self) -> str:
        return m_text(self.metric, self.direction)

    def _m(self, value: float | None) -> float | None:
        return Measurement(self.metric, value, self.direction).metric

    def ratios(self) -> list[float]:
        return sorted({p.ratio for p in self.points})

    def value(self, ratio: float, order: str) -> float | None:
        found = [p.value for p in self.points if p.ratio == ratio and p.order == order]
        return found[0] if found else None

    def gap(self, ratio: float) -> float | None:
        """G = M(Q alone) − M(P alone): positive when pruning is the stronger method."""
        m_q, m_p = self._m(self.quant_alone), self._m(self.prune_alone.get(f"{ratio:g}"))
        return None if m_q is None or m_p is None else m_q - m_p

    def advantage(self, ratio: float, setting: str) -> float | None:
        """A = M(pruning later) − M(pruning first) in one setting of SETTINGS."""
        first, later = (self._m(self.value(ratio, o)) for o in SETTINGS[setting])
        return None if first is None or later is None else later - first

    def held(self, ratio: float, setting: str) -> bool | None:
        """Did the order with the stronger method later win (A has the sign of G)?"""
        a, g = self.advantage(ratio, setting), self.gap(ratio)
        if a is None or g is None or a == 0 or g == 0:
            return None
        return (a > 0) == (g > 0)

    def summary(self) -> str:
        """One line: in how many (ratio, setting) cells the stronger method later won."""
        verdicts = {
            s: [h for r in self.ratios() if (h := self.held(r, s)) is not None] for s in SETTINGS
        }
        parts = [f"{s}: {sum(v)} of {len(v)}" for s, v in verdicts.items() if v]
        if not parts:
            return "no ratio has both orders and both methods alone: nothing to compare"
        return "stronger method later won — " + "; ".join(parts)

    def table(self) -> Table:
        """Every order at every ratio, with what its recovery kept after the merge."""
        rows = tuple(
            (
                f"{p.ratio:g}",
                p.order,
                p.pipeline,
                p.value,
                "—" if p.update_kept is None else cell(p.update_kept),
                " → ".join(cell(v) for v in p.probe_losses) or "—",
            )
            for p in self.points
        )
        columns = (
            "ratio",
            "order",
            "pipeline",
            self.metric,
            "LoRA update kept",
            "probe loss: before → trained → masked → on grid",
        )
        title = (
            f"{self.metric} by order ({self.pruner} × {self.quant}, recovery {self.lora}); "
            f"dense {cell(self.dense)}, {self.quant} alone {cell(self.quant_alone)}"
        )
        return Table(title, columns, rows)

    def advantage_table(self) -> Table:
        """Per ratio: the gap and the advantage of pruning later with and without recovery."""
        rows = []
        for r in self.ratios():
            row: list[object] = [f"{r:g}", self.prune_alone.get(f"{r:g}"), self.gap(r)]
            for s in SETTINGS:
                h = self.held(r, s)
                row += [self.advantage(r, s), "—" if h is None else "yes" if h else "no"]
            rows.append(tuple(row))
        columns = ["ratio", f"P alone {self.metric}", f"G {self.m_text}"]
        for s in SETTINGS:
            columns += [f"A {s}", "stronger later"]
        return Table(
            "A = M(pruning later) − M(pruning first); G = M(Q alone) − M(P alone)",
            tuple(columns),
            tuple(rows),
        )

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> LoraStudy:
        check_format("lora study", raw.get("format"), (FORMAT,))
        data = {k: v for k, v in raw.items() if k != "format"}
        return cls(**{**data, "points": [LoraPoint(**p) for p in raw["points"]]})


def check_lora_study(
    pruner: str, ratios: Sequence[float], quant: str, lora: str
) -> tuple[list[Method], Method, LoRA]:
    """The pruning steps (one per ratio), the quantizer and the lora step, validated."""
    if not ratios:
        raise ConfigError("a lora study needs at least one pruning ratio")
    prunes = [parse_step(pruner, {"ratio": r}).with_settings(ratio=r) for r in ratios]
    if prunes[0].family != "prune" or "ratio" not in prunes[0].settings():
        raise ConfigError(f"'{pruner}' is not a pruner with a ratio (sparsegpt, wanda, magnitude)")
    q = parse_step(quant)
    if q.family != "quantize":
        raise ConfigError(f"'{quant}' is a {q.family} step, not a quantizer (rtn, gptq)")
    lora_step = parse_step(lora)
    if not isinstance(lora_step, LoRA):
        raise ConfigError(f"'{lora}' is not a lora step")
    return prunes, q, lora_step


def _pipeline(order: str, p: Method, q: Method, lora: LoRA) -> tuple[Method, ...]:
    """The steps of one order; a lora step in the middle always merges."""
    pattern = ORDERS[order]
    middle = lora.with_settings(merge=True)
    pick = {"P": p, "Q": q}
    return tuple(
        pick[c] if c != "L" else (lora if i == len(pattern) - 1 else middle)
        for i, c in enumerate(pattern)
    )


def _point(ratio: float, order: str, steps: tuple[Method, ...], run: Run) -> LoraPoint:
    record = next((r for r in run.steps if r["family"] == "recover"), None)
    details = record["details"] if record else {}
    probes = ("probe_loss_before", "probe_loss_trained", "probe_loss_masked")
    return LoraPoint(
        ratio=ratio,
        order=order,
        pipeline=" > ".join(s.label() for s in steps),
        value=run.value if run.ok else None,
        update_kept=details.get("update_kept"),
        probe_losses=[details[k] for k in (*probes, "probe_loss_projected") if k in details],
        train_seconds=details.get("train_seconds"),
        error=run.error,
    )


def run_lora_study(
    study: Study,
    pruner: str = PRUNER,
    ratios: Sequence[float] = RATIOS,
    quant: str = QUANT,
    lora: str = LORA,
    progress: bool = True,
) -> LoraStudy:
    """Every order of ORDERS at each pruning ratio; every run stored."""
    prunes, q, lora_step = check_lora_study(pruner, ratios, quant, lora)
    plans = [
        (p.config.ratio, order, _pipeline(order, p, q, lora_step))
        for p in prunes
        for order in ORDERS
    ]
    for _, _, steps in plans:
        with suppress(OrderError):  # settings are checked now; an infeasible order is a failed run
            study.check(steps)
    dense = study.dense_run()
    alone_q = study.evaluate((q,))
    alone_p = {f"{p.config.ratio:g}": study.evaluate((p,)) for p in prunes}
    points = []
    for ratio, order, steps in tqdm(plans, desc="lora study", disable=not progress):
        points.append(_point(ratio, order, steps, study.evaluate(steps)))
    first = prunes[0]
    shown = first.config.model_dump(exclude_defaults=True, exclude={"ratio"})
    return LoraStudy(
        pruner=step_text(first.name, shown),
        quant=q.label(),
        lora=lora_step.label(),
        metric=dense.metric_name,
        direction=dense.direction,
        dense=dense.value,
        quant_alone=alone_q.value if alone_q.ok else None,
        prune_alone={k: r.value if r.ok else None for k, r in alone_p.items()},
        points=points,
    )


def plot_lora(result: LoraStudy, path: Path) -> Path:
    """The order advantage of pruning later against the intensity gap, one line per setting."""
    with figure(path) as ax:
        for i, setting in enumerate(SETTINGS):
            xy = sorted(
                (g, a)
                for r in result.ratios()
                if (g := result.gap(r)) is not None
                and (a := result.advantage(r, setting)) is not None
            )
            if xy:
                ax.plot(*zip(*xy, strict=True), "o-", color=f"C{i}", label=setting)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel(f"G = M(Q alone) − M(P alone), M = {result.m_text}")
        ax.set_ylabel("A = M(pruning later) − M(pruning first)")
        ax.set_title(f"{result.pruner} × {result.quant}, recovery {result.lora}")
        ax.legend(fontsize=8)
    return path
