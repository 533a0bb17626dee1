"""Order-dependent units and interference (the paper's Theorem 1 made concrete).

Every Linear's output error in an order is measured on the calibration activations of the
dense model: e(u) = ‖ΔW Xᵀ‖² / n = ½ tr(ΔW H ΔWᵀ), ΔW = W_order − W_dense. A weight's owner
is the method that finally handled it (pruned → P, kept → Q); it is order-dependent when the
two orders give it different owners. Assuming layer independence and a metric drop
proportional to error, M_dense − M(f) = κ · Σ_u e_f(u), with κ estimated from P alone and
Q alone. The advantage predicted from unit errors is then
A_pred(Q→P) = κ · Σ_u [e_{P→Q}(u) − e_{Q→P}(u)], and the remainder Δ = A − A_pred is
reported as interference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from torch import Tensor

from pqorder.errors import check_format
from pqorder.local_errors import output_energy
from pqorder.methods.base import Method
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.pipeline import label
from pqorder.study import Study
from pqorder.tables import Table

FORMAT = 2  # version of InterferenceResult.to_dict (1: ten units, no labels; read as well)


@dataclass(frozen=True)
class UnitOrderError:
    unit: str
    owner_changed: float  # fraction of the unit's weights whose owner depends on the order
    error_p_then_q: float
    error_q_then_p: float


@dataclass
class InterferenceResult:
    prune: str  # step texts
    quant: str
    labels: tuple[str, str]  # short labels of P and Q
    measured: float | None  # A(Q→P) in M
    predicted: float  # κ · Σ_u [e_PQ(u) − e_QP(u)]
    kappa: float
    units: list[UnitOrderError]  # every unit (a format-1 payload kept the ten largest)
    unit_count: int
    order_dependent_units: int  # units whose owner changes with the order

    @classmethod
    def of(
        cls,
        prune: Method,
        quant: Method,
        measured: float | None,
        predicted: float,
        kappa: float,
        units: list[UnitOrderError],
    ) -> InterferenceResult:
        """The result for P and Q with every unit's errors (labels and counts filled in)."""
        dependent = sum(u.owner_changed > 0 for u in units)
        pair = (prune.label(), quant.label())
        texts = (prune.to_text(), quant.to_text())
        return cls(*texts, pair, measured, predicted, kappa, units, len(units), dependent)

    @property
    def interference(self) -> float | None:
        return None if self.measured is None else self.measured - self.predicted

    def to_dict(self) -> dict:
        return {"format": FORMAT, **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict) -> InterferenceResult:
        """Read ``to_dict``'s form or format 1 (labels then come from the method registry)."""
        if check_format("interference result", raw.get("format", 1), (1, FORMAT)) == 1:
            labels, units = (label(raw["prune"]), label(raw["quant"])), raw["top_units"]
            counts = raw["units"], raw["order_dependent_units"]
        else:
            labels, units = tuple(raw["labels"]), raw["units"]
            counts = raw["unit_count"], raw["order_dependent_units"]
        numbers = raw["measured"], raw["predicted"], raw["kappa"]
        found = [UnitOrderError(**u) for u in units]
        return cls(raw["prune"], raw["quant"], labels, *numbers, found, *counts)


def interference_table(results: Sequence[InterferenceResult]) -> Table:
    """Measured and predicted A(Q→P), the remainder Δ, κ and the order-dependent units."""
    rows = tuple(
        (
            *r.labels,
            *(r.measured, r.predicted, r.interference, r.kappa),
            f"{r.order_dependent_units}/{r.unit_count}",
        )
        for r in results
    )
    columns = ("P", "Q", "A measured", "A predicted", "Δ", "κ", "order-dependent units")
    return Table("order-dependent units and interference", columns, rows)


def dense_hessians(study: Study) -> dict[str, Tensor]:
    """Every unit's input Hessian on the dense model (the study's unit samples, all blocks)."""
    return {u.name: u.stats.hessian.cpu() for u in study.unit_samples(1).units}


def _errors(study: Study, steps: tuple[Method, ...], hessians: dict[str, Tensor]) -> dict:
    """Per unit: (output error, keep mask) of the model after ``steps``."""
    study.materialize(steps)
    out = {}
    for name, module in compressible_units(study.lm.model).items():
        delta = get_weight(module).cpu() - study.dense_weight(name)  # (out, in)
        error = 0.5 * output_energy(delta, hessians[name])
        out[name] = (error, study.lm.state.get(name).kept(delta))
    return out


def analyze_interference(
    study: Study, prune: Method, quant: Method, hessians: dict[str, Tensor]
) -> InterferenceResult:
    """Unit errors of P alone, Q alone and both orders; predicted vs measured A(Q→P)."""
    dense_metric = study.dense_run().metric
    kappas = []
    for step in (prune, quant):
        run = study.evaluate((step,))
        total = sum(e for e, _ in _errors(study, (step,), hessians).values())
        if run.ok and total > 0:
            kappas.append((dense_metric - run.metric) / total)
    kappa = sum(kappas) / len(kappas) if kappas else 0.0
    run_pq = study.evaluate((prune, quant))  # evaluating first leaves the model in place
    pq = _errors(study, (prune, quant), hessians)
    run_qp = study.evaluate((quant, prune))
    qp = _errors(study, (quant, prune), hessians)
    units = [
        UnitOrderError(
            name, float((pq[name][1] != qp[name][1]).float().mean()), pq[name][0], qp[name][0]
        )
        for name in pq
    ]
    measured = run_qp.metric - run_pq.metric if run_pq.ok and run_qp.ok else None
    predicted = kappa * sum(u.error_p_then_q - u.error_q_then_p for u in units)
    return InterferenceResult.of(prune, quant, measured, predicted, kappa, units)
