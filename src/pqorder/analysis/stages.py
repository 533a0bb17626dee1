"""Multi-stage pruning: a fixed pruning budget split into two stages around a middle step.

The paper alternates SparseGPT with QuaRot on LLaMA-3-8B at a fixed total pruning ratio and
finds that putting the stronger pruning stage later wins. Here, for each pruner and each
first-stage share s of the total T, the study runs ``pruner:ratio=s > middle >
pruner:ratio=T`` (ratios are cumulative, see ``pqorder.methods.pruner``: the second stage adds
T − s of all weights), plus the single-stage references, all before (``pruner:ratio=T >
middle``) and all after (``middle > pruner:ratio=T``). Each is an ordinary stored run, and the
Study reuses the shared prefixes (the middle step alone, each first stage with the middle step
after it). For each mirrored pair of splits (30/10 against 10/30, all before against all
after) the advantage of back-loading, M(back-loaded) − M(front-loaded), is positive when the
stronger stage later won.

pqorder refuses to rotate after pruning (the rotation would make the zeros dense), so with a
rotation as the middle step only the all-after reference is feasible: the other runs are
stored as failed ("infeasible order") with the reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from pqorder.errors import ConfigError, OrderError, check_format
from pqorder.methods.base import Method, step_text
from pqorder.methods.pruner import Pruner
from pqorder.pipeline import parse_step
from pqorder.plotting import figure
from pqorder.store import Direction, Measurement, Run, m_text
from pqorder.study import Study
from pqorder.tables import Table, cell

PRUNERS = ("sparsegpt", "wanda")
TOTAL = 0.4
FIRST = (0.3, 0.2, 0.1)  # pruning before the middle step, front-loaded to back-loaded
MIDDLE = "gptq:bits=4,group=128"
FORMAT = 1  # version of StagesStudy.to_dict


@dataclass(frozen=True)
class StagePoint:
    """One split of one pruner: its run's value and the model's sparsity after each step."""

    pruner: str  # the pruner's label without its ratio
    before: float  # sparsity reached before the middle step (0: all pruning after it)
    after: float  # sparsity added after the middle step (total − before)
    pipeline: str  # the run's steps, as short labels
    value: float | None  # the protocol's number; None when the run failed
    sparsity: list[float]  # the model's sparsity after each step, from the step records
    error: str | None = None

    @property
    def split(self) -> str:
        """``30/10``: percent of all weights pruned before / after the middle step."""
        return f"{round(self.before * 100):d}/{round(self.after * 100):d}"


@dataclass(frozen=True)
class StagesStudy:
    middle: str  # step text of the middle step
    middle_label: str
    total: float  # the model's sparsity after the last stage, in every run
    metric: str
    direction: Direction
    dense: float | None
    middle_alone: float | None
    points: list[StagePoint]  # per pruner, front-loaded (all before) to back-loaded (all after)

    @property
    def m_text(self) -> str:
        """How M, the unit of the advantages, is written."""
        return m_text(self.metric, self.direction)

    def _m(self, value: float | None) -> float | None:
        return Measurement(self.metric, value, self.direction).metric

    def mirrors(self) -> list[tuple[StagePoint, StagePoint]]:
        """(front-loaded, back-loaded) pairs of one pruner with mirrored splits (30/10, 10/30)."""
        pairs = []
        for front in self.points:
            for back in self.points:
                mirrored = abs(front.before - back.after) < 1e-9 and front.before > back.before
                if front.pruner == back.pruner and mirrored:
                    pairs.append((front, back))
        return pairs

    def advantage(self, front: StagePoint, back: StagePoint) -> float | None:
        """M(back-loaded) − M(front-loaded): positive when the stronger stage later won."""
        m_front, m_back = self._m(front.value), self._m(back.value)
        return None if m_front is None or m_back is None else m_back - m_front

    def held(self) -> list[bool]:
        """For each comparable mirrored pair: did back-loading (stronger stage later) win?"""
        out = []
        for front, back in self.mirrors():
            if (a := self.advantage(front, back)) is not None:
                out.append(a > 0)
        return out

    def summary(self) -> str:
        """One line: in how many mirrored pairs the stronger stage later won."""
        held = self.held()
        if not held:
            return "no mirrored pair of splits has both runs: nothing to compare"
        return (
            f"stronger stage later won in {sum(held)} of {len(held)} mirrored pairs "
            f"(A(back) = M(back-loaded) − M(front-loaded), M = {self.m_text})"
        )

    def table(self) -> Table:
        """Every split of every pruner with the sparsity after each step and the metric."""
        rows = tuple(
            (
                p.pruner,
                p.split,
                p.pipeline,
                " → ".join(cell(s) for s in p.sparsity) or "—",
                p.value,
            )
            for p in self.points
        )
        columns = ("pruner", "before/after %", "pipeline", "sparsity after each step", self.metric)
        title = (
            f"{self.metric} with {self.total:.0%} pruning split around {self.middle_label}; "
            f"dense {cell(self.dense)}, {self.middle_label} alone {cell(self.middle_alone)}"
        )
        return Table(title, columns, rows)

    def mirror_table(self) -> Table:
        """Each mirrored pair: both values and the advantage of putting the stronger stage later."""
        rows = []
        for front, back in self.mirrors():
            a = self.advantage(front, back)
            verdict = "—" if a is None else "yes" if a > 0 else "no"
            rows.append(
                (front.pruner, front.split, back.split, front.value, back.value, a, verdict)
            )
        columns = (
            *("pruner", "front-loaded", "back-loaded", f"front {self.metric}"),
            *(f"back {self.metric}", f"A(back) {self.m_text}", "stronger later wins"),
        )
        return Table("stronger stage later?", columns, tuple(rows))

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> StagesStudy:
        check_format("stages study", raw.get("format"), (FORMAT,))
        data = {k: v for k, v in raw.items() if k != "format"}
        return cls(**{**data, "points": [StagePoint(**p) for p in raw["points"]]})


def stage_pipelines(
    pruner: Pruner, middle: Method, total: float, first: Sequence[float]
) -> list[tuple[float, tuple[Method, ...]]]:
    """(pruning before the middle step, steps) from all before to all after."""
    last = pruner.with_settings(ratio=total)
    splits: list[tuple[float, tuple[Method, ...]]] = [(total, (last, middle))]
    splits += [(s, (pruner.with_settings(ratio=s), middle, last)) for s in first]
    return [*splits, (0.0, (middle, last))]


def check_stages(
    pruners: Sequence[str], total: float, first: Sequence[float], middle: str
) -> tuple[list[Pruner], Method]:
    """The pruner templates and the middle step, every setting validated before any work."""
    middle_step = parse_step(middle)
    if middle_step.family == "prune":
        raise ConfigError(
            f"the middle step {middle_step.label()} is a pruning step: give a quantization or "
            "rotation step to split the pruning around"
        )
    if not pruners:
        raise ConfigError("a stages study needs at least one pruner (sparsegpt, wanda, magnitude)")
    if not 0 < total < 1:
        raise ConfigError(f"the total pruning ratio must lie in (0, 1), got {total:g}")
    for s in first:
        if not 0 < s < total:
            raise ConfigError(
                f"first stage {s:g} must lie strictly between 0 and the total {total:g} "
                "(all before and all after the middle step always run)"
            )
    templates = []
    for text in pruners:
        step = parse_step(text, {"ratio": total})
        if not isinstance(step, Pruner) or step.config.nm is not None:
            raise ConfigError(
                f"'{text}' is not an unstructured pruner: stages split a ratio of weights "
                "(sparsegpt, wanda, magnitude)"
            )
        templates.append(step.with_settings(ratio=total))
    return templates, middle_step


def _pruner_label(pruner: Pruner) -> str:
    """The pruner's short label without its ratio (``sparsegpt``, ``sparsegpt:damp=0.05``)."""
    return step_text(
        pruner.name, pruner.config.model_dump(exclude_defaults=True, exclude={"ratio"})
    )


def _point(
    pruner: Pruner, before: float, total: float, steps: tuple[Method, ...], run: Run
) -> StagePoint:
    return StagePoint(
        pruner=_pruner_label(pruner),
        before=before,
        after=round(total - before, 9),
        pipeline=" > ".join(s.label() for s in steps),
        value=run.value if run.ok else None,
        sparsity=[round(r["sparsity"], 6) for r in run.steps],
        error=run.error,
    )


def run_stages_study(
    study: Study,
    pruners: Sequence[str] = PRUNERS,
    total: float = TOTAL,
    first: Sequence[float] = FIRST,
    middle: str = MIDDLE,
    progress: bool = True,
) -> StagesStudy:
    """Every split of ``total`` pruning around ``middle`` for each pruner; every run stored.

    ``pruners`` are step texts without the ratio (``sparsegpt``, ``wanda:nm=...`` is refused);
    ``first`` holds the pruning done before the middle step, strictly between 0 and ``total``
    (all before and all after always run).
    """
    templates, middle_step = check_stages(pruners, total, first, middle)
    first = list(dict.fromkeys(sorted(first, reverse=True)))
    plans = {p: stage_pipelines(p, middle_step, total, first) for p in templates}
    for steps in (s for plan in plans.values() for _, s in plan):
        with suppress(OrderError):  # settings are checked now; an infeasible order is a failed run
            study.check(steps)
    study.prefetch([(), (middle_step,), *(s for plan in plans.values() for _, s in plan)])
    dense = study.dense_run()
    alone = study.evaluate((middle_step,))
    points = []
    total_runs = sum(len(plan) for plan in plans.values())
    with tqdm(total=total_runs, desc="stages study", disable=not progress) as bar:
        for pruner, plan in plans.items():
            for before, steps in plan:
                points.append(_point(pruner, before, total, steps, study.evaluate(steps)))
                bar.update()
    return StagesStudy(
        middle_step.to_text(),
        middle_step.label(),
        total,
        dense.metric_name,
        dense.direction,
        dense.value,
        alone.value if alone.ok else None,
        points,
    )


def plot_stages(result: StagesStudy, path: Path) -> Path:
    """The metric against the split (front-loaded to back-loaded), one line per pruner."""
    with figure(path) as ax:
        splits = sorted({(-p.before, p.split) for p in result.points})
        where = {split: i for i, (_, split) in enumerate(splits)}
        for i, pruner in enumerate(dict.fromkeys(p.pruner for p in result.points)):
            xy = sorted(
                (where[p.split], p.value)
                for p in result.points
                if p.pruner == pruner and p.value is not None
            )
            if xy:
                ax.plot(*zip(*xy, strict=True), "o-", color=f"C{i}", label=pruner)
        for value, style, tag in (
            (result.dense, ":", "dense"),
            (result.middle_alone, "--", f"{result.middle_label} alone"),
        ):
            if value is not None:
                ax.axhline(value, color="grey", lw=0.8, ls=style, label=tag)
        ax.set_xticks(range(len(splits)), [split for _, split in splits])
        ax.set_xlabel(f"% of weights pruned before / after {result.middle_label}")
        ax.set_ylabel(result.metric)
        if result.metric == "perplexity":
            ax.set_yscale("log")
        ax.set_title(f"{result.total:.0%} pruning in two stages (back-loaded to the right)")
        ax.legend(fontsize=8)
    return path
