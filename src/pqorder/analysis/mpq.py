"""Mixed precision as an order problem: progressive vs regressive bit allocation per budget.

The paper allocates per-layer bit-widths at a fixed average and finds that quantizing from
higher to lower bits (progressive) beats the reverse (regressive), more so as compression
grows, and that mixed precision has no interference. For each average budget the study runs
the ``mpq`` step three times, ``order=progressive``, ``regressive`` and ``once`` (the same
allocation each time: it is scored on the dense model before any quantization), plus the two
halves of the allocation alone, ``part=high`` (units given at least the average) and
``part=low`` (the rest), with the other half left in full precision. Every run is an
ordinary stored run.

Per budget:
- order advantage A = M(progressive) − M(regressive): positive when high-bits-first won;
- intensity gap G = M(high half alone) − M(low half alone) (the paper's G(f1, f2) with f1 the
  half progressive quantizes first): positive when the low-bit half is the stronger, so the
  PIH ("weaker first") predicts progressive, A > 0;
- interference: every unit has the same bit-width in every order (the allocation does not
  depend on the order), so no unit is order-dependent in the paper's sense; what can still
  differ is each unit's own error, since a GPTQ walk calibrates on activations through the
  groups quantized before it. Δ_u = e_prog(u) − e_regr(u), with e(u) = ‖(W_q − W) Xᵀ‖² on the
  dense calibration inputs X (the step's ``errors`` record); with RTN Δ is exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import suppress
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

from tqdm.auto import tqdm

from pqorder.errors import ConfigError, OrderError, check_format
from pqorder.methods.base import step_text
from pqorder.methods.mpq import MixedPrecision
from pqorder.pipeline import parse_step
from pqorder.plotting import figure
from pqorder.store import Direction, Measurement, Run, m_text
from pqorder.study import Study
from pqorder.tables import Table, cell

STEP = "mpq:set=2/3/4/8,quant=gptq,group=128"
BUDGETS = (3.0, 4.0, 5.0)
ORDERS = ("progressive", "regressive", "once")
PARTS = ("high", "low")
CHANGED = 0.01  # a unit's error changed with the order when |Δ| exceeds this share of it
FORMAT = 1  # version of MPQStudy.to_dict


@dataclass(frozen=True)
class MPQRun:
    """One run of the study: an order (or a half alone) at one budget."""

    budget: float
    run: str  # progressive, regressive, once, high (half alone), low (half alone)
    pipeline: str  # the step's short label
    value: float | None  # the protocol's number; None when the run failed
    bits: float | None  # achieved average bits per weight of the allocation
    widths: dict[str, int]  # units per bit-width ("2": 30, ...), of the units quantized
    passes: list[dict]  # each walk: bits, units, weights, seconds
    seconds: float | None  # the step's time
    error: str | None = None


@dataclass(frozen=True)
class MPQInterference:
    """Per-unit errors of progressive against regressive at one budget."""

    budget: float
    units: int  # units compared
    moved: int  # units whose bit-width differs between the orders (order-dependent units)
    error_progressive: float  # Σ e(u), on dense calibration inputs
    error_regressive: float
    delta: float  # Σ Δ_u = Σ e_prog(u) − e_regr(u)
    abs_delta: float  # Σ |Δ_u|
    changed: int  # units with |Δ_u| > CHANGED × their regressive error


@dataclass(frozen=True)
class MPQStudy:
    step: str  # the template step's text (without avg, order, part)
    step_label: str
    metric: str
    direction: Direction
    dense: float | None
    budgets: list[float]
    runs: list[MPQRun]
    interference: list[MPQInterference]
    score_seconds: float | None  # the measured cost of one scoring walk

    @property
    def m_text(self) -> str:
        return m_text(self.metric, self.direction)

    def _m(self, budget: float, run: str) -> float | None:
        value = next((r.value for r in self.runs if r.budget == budget and r.run == run), None)
        return Measurement(self.metric, value, self.direction).metric

    def _diff(self, budget: float, a: str, b: str) -> float | None:
        ma, mb = self._m(budget, a), self._m(budget, b)
        return None if ma is None or mb is None else ma - mb

    def advantage(self, budget: float) -> float | None:
        """A = M(progressive) − M(regressive): positive when high bits first won."""
        return self._diff(budget, "progressive", "regressive")

    def gap(self, budget: float) -> float | None:
        """G = M(high half alone) − M(low half alone): positive when the low half is stronger."""
        return self._diff(budget, "high", "low")

    def pih_held(self, budget: float) -> bool | None:
        """Did the weaker half first win (A and G of one sign)?"""
        a, g = self.advantage(budget), self.gap(budget)
        return None if a is None or g is None or a == 0 or g == 0 else (a > 0) == (g > 0)

    def grows(self) -> bool | None:
        """Does A(progressive) rise strictly as the budget falls (more compression)? None with
        fewer than two budgets measured."""
        found = [
            a for b in sorted(self.budgets, reverse=True) if (a := self.advantage(b)) is not None
        ]
        if len(found) < 2:
            return None
        return all(later > earlier for earlier, later in pairwise(found))

    def summary(self) -> str:
        """One line: how often progressive won, whether that grew with compression."""
        wins = [a > 0 for b in self.budgets if (a := self.advantage(b)) is not None]
        if not wins:
            return "no budget has both orders: nothing to compare"
        grows = {True: "yes", False: "no", None: "not measurable"}[self.grows()]
        return (
            f"progressive won at {sum(wins)} of {len(wins)} budgets (A = M(progressive) − "
            f"M(regressive), M = {self.m_text}); A grew as the budget fell: {grows}"
        )

    def table(self) -> Table:
        """Per budget: the three orders, the advantage, both halves alone and the gap."""
        rows = []
        for b in self.budgets:
            run = {r.run: r for r in self.runs if r.budget == b}
            bits = next((r.bits for r in run.values() if r.bits is not None), None)
            held = {True: "yes", False: "no", None: "—"}[self.pih_held(b)]
            rows.append(
                (
                    b,
                    bits,
                    *(run[o].value if o in run else None for o in ORDERS),
                    self.advantage(b),
                    *(run[p].value if p in run else None for p in PARTS),
                    self.gap(b),
                    held,
                )
            )
        columns = (
            "budget (bits)",
            "achieved",
            *(f"{o} {self.metric}" for o in ORDERS),
            f"A(prog) {self.m_text}",
            f"high half alone {self.metric}",
            f"low half alone {self.metric}",
            f"G {self.m_text}",
            "weaker half first won",
        )
        title = f"{self.step_label} per average budget; dense {cell(self.dense)}"
        return Table(title, columns, tuple(rows))

    def runs_table(self) -> Table:
        """Every run: bit-widths used and the time of each walk (in quantization order)."""
        rows = tuple(
            (
                r.budget,
                r.run,
                r.pipeline,
                ", ".join(
                    f"{n}×{w}b" for w, n in sorted(r.widths.items(), key=lambda x: -int(x[0]))
                ),
                " → ".join(
                    f"{'/'.join(str(b) for b in p['bits'])}b {p['seconds']:.1f}s" for p in r.passes
                )
                or "—",
                r.value,
            )
            for r in self.runs
        )
        columns = ("budget", "run", "step", "units × bits", "walks (time)", self.metric)
        return Table("runs and the time of each walk", columns, rows)

    def interference_table(self) -> Table:
        rows = tuple(
            (
                i.budget,
                i.units,
                i.moved,
                i.error_progressive,
                i.error_regressive,
                i.delta,
                i.abs_delta / max(i.error_regressive, 1e-30),
                i.changed,
            )
            for i in self.interference
        )
        columns = (
            "budget",
            "units",
            "order-dependent units",
            "Σ e progressive",
            "Σ e regressive",
            "Σ Δ",
            "Σ|Δ| / Σ e regr",
            f"units |Δ| > {CHANGED:.0%}",
        )
        return Table("interference: per-unit errors, progressive vs regressive", columns, rows)

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> MPQStudy:
        check_format("mpq study", raw.get("format"), (FORMAT,))
        data = {k: v for k, v in raw.items() if k != "format"}
        return cls(
            **{
                **data,
                "runs": [MPQRun(**r) for r in raw["runs"]],
                "interference": [MPQInterference(**i) for i in raw["interference"]],
            }
        )


def check_mpq(step: str, budgets: Sequence[float]) -> MixedPrecision:
    """The template step (``errors`` on), every budget validated with it, before any work."""
    template = parse_step(step)
    if not isinstance(template, MixedPrecision):
        raise ConfigError(f"'{step}' is not an mpq step (e.g. {STEP})")
    if not budgets:
        raise ConfigError("an mpq study needs at least one average budget (e.g. 3,4,5)")
    for b in budgets:
        template.with_settings(avg=b)  # an average outside the set is refused here
    return template.with_settings(errors=True, order="once", part="all")


def _template_label(step: MixedPrecision) -> str:
    shown = step.config.model_dump(
        exclude_defaults=True, exclude={"avg", "order", "part", "errors"}
    )
    return step_text(step.name, {"set": step.config.set, "quant": step.config.quant, **shown})


def _run(budget: float, name: str, step: MixedPrecision, run: Run) -> MPQRun:
    details = run.steps[0]["details"] if run.ok and run.steps else {}
    allocation = details.get("allocation", {})
    widths: dict[str, int] = {}
    for unit in details.get("unit_error", {}):  # the units this run quantized
        key = str(allocation[unit])
        widths[key] = widths.get(key, 0) + 1
    return MPQRun(
        budget=budget,
        run=name,
        pipeline=step.label(),
        value=run.value if run.ok else None,
        bits=details.get("average_bits"),
        widths=widths,
        passes=[{k: p[k] for k in ("bits", "units", "seconds")} for p in details.get("passes", [])],
        seconds=run.steps[0]["seconds"] if run.ok and run.steps else None,
        error=run.error,
    )


def _interference(budget: float, prog: Run, regr: Run) -> MPQInterference | None:
    if not (prog.ok and regr.ok and prog.steps and regr.steps):
        return None
    a, b = prog.steps[0]["details"], regr.steps[0]["details"]
    ea, eb = a["unit_error"], b["unit_error"]
    units = sorted(set(ea) & set(eb))
    deltas = {u: ea[u] - eb[u] for u in units}
    return MPQInterference(
        budget=budget,
        units=len(units),
        moved=sum(a["allocation"][u] != b["allocation"][u] for u in units),
        error_progressive=sum(ea[u] for u in units),
        error_regressive=sum(eb[u] for u in units),
        delta=sum(deltas.values()),
        abs_delta=sum(abs(d) for d in deltas.values()),
        changed=sum(abs(d) > CHANGED * abs(eb[u]) for u, d in deltas.items()),
    )


def run_mpq_study(
    study: Study, step: str = STEP, budgets: Sequence[float] = BUDGETS, progress: bool = True
) -> MPQStudy:
    """The three orders and the two halves alone at each average budget; every run stored."""
    template = check_mpq(step, budgets)
    budgets = sorted(dict.fromkeys(float(b) for b in budgets))
    plans = []
    for b in budgets:
        for order in ORDERS:
            plans.append((b, order, template.with_settings(avg=b, order=order)))
        for part in PARTS:
            plans.append((b, part, template.with_settings(avg=b, part=part)))
    for _b, _name, s in plans:
        with suppress(OrderError):  # settings are checked now; an infeasible order is a failed run
            study.check((s,))
    dense = study.dense_run()
    runs: dict[tuple[float, str], Run] = {}
    with tqdm(total=len(plans), desc="mpq study", disable=not progress) as bar:
        for b, name, s in plans:
            runs[(b, name)] = study.evaluate((s,))
            bar.update()
    points = [_run(b, name, s, runs[(b, name)]) for b, name, s in plans]
    interference = [
        found
        for b in budgets
        if (found := _interference(b, runs[(b, "progressive")], runs[(b, "regressive")]))
    ]
    scored = [r.steps[0]["details"]["score_seconds"] for r in runs.values() if r.ok and r.steps]
    return MPQStudy(
        step=template.to_text(),
        step_label=_template_label(template),
        metric=dense.metric_name,
        direction=dense.direction,
        dense=dense.value,
        budgets=budgets,
        runs=points,
        interference=interference,
        score_seconds=scored[0] if scored else None,
    )


def plot_mpq(result: MPQStudy, path: Path) -> Path:
    """The metric against the average budget, one line per order, both halves dashed."""
    with figure(path) as ax:
        styles = {
            "progressive": "o-",
            "regressive": "s-",
            "once": "^-",
            "high": "x--",
            "low": "+--",
        }
        names = {"high": "high half alone", "low": "low half alone"}
        for i, (name, style) in enumerate(styles.items()):
            xy = sorted(
                (r.budget, r.value) for r in result.runs if r.run == name and r.value is not None
            )
            if xy:
                ax.plot(*zip(*xy, strict=True), style, color=f"C{i}", label=names.get(name, name))
        if result.dense is not None:
            ax.axhline(result.dense, color="grey", lw=0.8, ls=":", label="dense")
        ax.set_xticks(result.budgets)
        ax.set_xlabel("average bits per weight")
        ax.set_ylabel(result.metric)
        if result.metric == "perplexity":
            ax.set_yscale("log")
        ax.set_title(f"mixed precision by order: {result.step_label}")
        ax.legend(fontsize=8)
    return path
