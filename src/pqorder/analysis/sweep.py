"""Strength sweeps: how the order advantage A(Q→P) grows with the CER gap C*_P − C_Q.

For every pruning setting P and bit-width b of the quantizer Q, both orders are evaluated;
A(Q→P) = M(P after Q) − M(Q after P) with M = −perplexity (or accuracy, retrieval top-1).
The paper's figure plots A against the CER gap, one curve per pruning ratio; Spearman's ρ
measures how monotone it is.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pqorder.analysis.cer import quant_ratio
from pqorder.analysis.intensity import (
    CurveOptions,
    collapsed,
    drop_scale,
    quant_share,
    reference_curve,
    reference_steps,
)
from pqorder.errors import ConfigError, check_format
from pqorder.local_errors import is_local, local_order_errors
from pqorder.methods.base import Method
from pqorder.pipeline import parse_step
from pqorder.plotting import figure
from pqorder.store import Direction, m_text, v1_direction
from pqorder.study import Study
from pqorder.tables import Table

# version of SweepResult.to_dict (3: no quantizer share; 2: no singles or local errors; 1: also
# no direction; all read too)
FORMAT = 4


@dataclass(frozen=True)
class SweepPoint:
    prune: str
    quant: str
    ratio: float
    bits: int
    value_prune_then_quant: float | None  # the protocol's number (perplexity, top-1, ...)
    value_quant_then_prune: float | None
    cer_prune: float | None
    cer_quant: float
    advantage_q_first: float | None  # A(Q→P)
    collapse: bool = False  # an order is in a collapse zone (see ``collapsed``)
    prune_stronger: bool | None = None  # P alone scores worse than Q alone (None: a run failed)
    scale: float | None = None  # (M_dense − M_P) + (M_dense − M_Q), the predictor's scale
    local_log_ratio: float | None = None  # log(e_P→Q / e_Q→P) (``local_errors``), unit methods
    quant_share: float | None = None  # (M_dense − M_Q) / scale: the quantizer's part of the damage

    @property
    def cer_gap(self) -> float | None:
        return None if self.cer_prune is None else self.cer_prune - self.cer_quant


@dataclass
class SweepResult:
    points: list[SweepPoint]
    # Spearman ρ(A, CER gap) per pruning method and "all", each also without collapse points
    rho: dict[str, float | None] = field(default_factory=dict)
    metric: str = "perplexity"  # what the values are
    direction: Direction = "lower"  # which values of the metric are better

    @property
    def m_text(self) -> str:
        """How M, the unit of the advantages, is written."""
        return m_text(self.metric, self.direction)

    def table(self) -> Table:
        """Both orders at every point, the CER gap and A(Q→P)."""
        rows = tuple(
            (
                *(p.prune, p.ratio, p.bits, p.value_prune_then_quant, p.value_quant_then_prune),
                *(p.cer_gap, p.advantage_q_first, "yes" if p.collapse else ""),
            )
            for p in self.points
        )
        columns = (
            *("pruner", "ratio", "bits", f"P→Q {self.metric}", f"Q→P {self.metric}"),
            *("CER gap", "A(Q→P)", "collapse"),
        )
        return Table(f"sweep ({self.metric}; A in {self.m_text})", columns, rows)

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "points": [asdict(p) for p in self.points],
            "rho": self.rho,
            "metric": self.metric,
            "direction": self.direction,
        }

    @classmethod
    def from_dict(cls, raw: dict) -> SweepResult:
        """Read ``to_dict``'s form or format 1 (its direction is the one perplexity implied)."""
        version = check_format("sweep result", raw.get("format", 1), (1, 2, 3, FORMAT))
        metric = raw.get("metric", "perplexity")  # format 1 written before metrics had names
        direction = raw["direction"] if version > 1 else v1_direction(metric)
        points = [
            SweepPoint(**{k: v for k, v in p.items() if k != "cer_gap"}) for p in raw["points"]
        ]
        return cls(points, raw["rho"], metric, direction)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (average ranks for ties); None if undefined."""
    if len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = v.argsort(kind="stable")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):  # average the ranks of ties
        tied = v == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def run_sweep(
    study: Study,
    pruners: Sequence[str],
    ratios: Sequence[float],
    quantizer: str,
    bits: Sequence[int],
    options: CurveOptions | None = None,
    progress: bool = True,
    collapse_factor: float = 3.0,
    every: int | None = 5,
) -> SweepResult:
    """Both orders at every (pruner, ratio, bits); CER from the quantizer's own curve.

    Points where either order is in a collapse zone (perplexity above ``collapse_factor`` ×
    dense, accuracy below dense / ``collapse_factor``) are marked as collapse points (the
    paper excludes collapse zones); ρ is given with and without them. Each point also holds
    the predictor's evidence: the local errors of both orders on the units of every
    ``every``-th block (None: not computed) when both methods work unit by unit.
    """
    if not pruners or not ratios or not bits:
        raise ConfigError("a sweep needs at least one pruner, one ratio and one bit-width")
    base_q = parse_step(quantizer, {"bits": bits[0]})
    if base_q.family != "quantize":
        raise ConfigError(f"'{quantizer}' is not a quantization step")
    prune_steps = {}
    for text in pruners:
        base_p = parse_step(text, {"ratio": ratios[0]})
        if base_p.family != "prune":
            raise ConfigError(f"'{text}' is not a pruning method")
        for r in ratios:  # keyed by the text: two settings of one method are two pruners
            prune_steps[(text, r)] = base_p.with_settings(ratio=r)
    q_steps = {b: base_q.with_settings(bits=b) for b in bits}
    options = options or CurveOptions(quantizer=quantizer, bits=tuple(sorted(set(bits) | {3, 8})))
    pairs = [(p, q) for p in prune_steps.values() for q in q_steps.values()]
    orders = [(), *((s,) for s in [*reference_steps(options), *prune_steps.values()])]
    orders += [order for p, q in pairs for order in ((p, q), (q, p))]
    find_local = functools.partial(_local_ratios, study, pairs, every)
    if study.executor.kind == "local":
        study.prefetch(orders)  # nothing to overlap: the driver's model runs the orders
        local_ratios = find_local()
    else:  # the driver's model is idle while the workers run the orders: overlap the two
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(find_local)
            study.prefetch(orders)
            local_ratios = pending.result()
    curve = reference_curve(study, options)
    dense = study.dense_run()
    points = []
    total = len(prune_steps) * len(q_steps)
    with tqdm(total=total, desc="sweep", disable=not progress) as bar:
        for (pname, r), p in prune_steps.items():
            p_run = study.evaluate((p,))
            cer_p = curve.cer(p_run.metric).value if p_run.ok else None
            for b, q in q_steps.items():
                q_run = study.evaluate((q,))  # on the reference curve: a stored run
                stronger = p_run.metric < q_run.metric if p_run.ok and q_run.ok else None
                scale = drop_scale(dense, p_run, q_run)
                share = quant_share(dense, q_run, scale)
                local = local_ratios.get((p.to_text(), q.to_text()))
                pq, qp = study.evaluate((p, q)), study.evaluate((q, p))
                adv = qp.metric - pq.metric if pq.ok and qp.ok else None
                collapse = collapsed(pq, dense, collapse_factor) or collapsed(
                    qp, dense, collapse_factor
                )
                c_q = quant_ratio(b, curve.mapping, curve.reference_bits)
                points.append(
                    SweepPoint(
                        pname,
                        q.to_text(),
                        r,
                        b,
                        pq.value,
                        qp.value,
                        cer_p,
                        c_q,
                        adv,
                        collapse,
                        stronger,
                        scale,
                        local,
                        share,
                    )
                )
                bar.update()
    return SweepResult(points, _rhos(points), dense.metric_name, dense.direction)


def _local_ratios(
    study: Study, pairs: Sequence[tuple[Method, Method]], every: int | None
) -> dict[tuple[str, str], float]:
    """The predictor's feature log(e_P→Q / e_Q→P) of every pair whose methods both work unit
    by unit, keyed by the steps' texts (none when ``every`` is None)."""
    local = [(p, q) for p, q in pairs if every is not None and is_local(p) and is_local(q)]
    if not local:
        return {}
    samples = study.unit_samples(every)
    return {
        (p.to_text(), q.to_text()): local_order_errors(samples, p, q).log_ratio for p, q in local
    }


def _rhos(points: list[SweepPoint]) -> dict[str, float | None]:
    def rho(pts: list[SweepPoint]) -> float | None:
        usable = [p for p in pts if p.cer_gap is not None and p.advantage_q_first is not None]
        return spearman([p.cer_gap for p in usable], [p.advantage_q_first for p in usable])

    groups = {name: [p for p in points if p.prune == name] for name in {p.prune for p in points}}
    groups["all"] = points
    out = {}
    for name, pts in sorted(groups.items()):
        out[name] = rho(pts)
        out[f"{name} excl. collapse"] = rho([p for p in pts if not p.collapse])
    return out


def plot_sweep(result: SweepResult, path: Path, title: str = "") -> Path:
    """The paper's figure: x = CER gap C*_P − C_Q, y = A(Q→P), one curve per pruning ratio."""
    with figure(path) as ax:
        for name, ratio in sorted({(p.prune, p.ratio) for p in result.points}):
            pts = sorted(
                (
                    p
                    for p in result.points
                    if (p.prune, p.ratio) == (name, ratio)
                    and p.cer_gap is not None
                    and p.advantage_q_first is not None
                ),
                key=lambda p: p.cer_gap,
            )
            if pts:
                ax.plot(
                    [p.cer_gap for p in pts],
                    [p.advantage_q_first for p in pts],
                    "o-",
                    label=f"{name} {ratio:g}",
                )
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8, ls=":")
        ax.set_xlabel("CER gap  C*_P − C_Q")
        ax.set_ylabel(f"order advantage  A(Q→P)  [{result.m_text}]")
        rho = result.rho.get("all")
        ax.set_title(title or (f"Spearman ρ = {rho:.2f}" if rho is not None else "order advantage"))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        else:
            ax.text(
                0.5,
                0.5,
                "no point has a CER inside the reference curve",
                ha="center",
                transform=ax.transAxes,
            )
    return path
