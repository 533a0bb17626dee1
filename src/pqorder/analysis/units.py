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

from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from pqorder.layerwise import calibrated_units
from pqorder.methods.base import Method
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.study import Study


@dataclass(frozen=True)
class UnitOrderError:
    unit: str
    owner_changed: float  # fraction of the unit's weights whose owner depends on the order
    error_p_then_q: float
    error_q_then_p: float


@dataclass
class InterferenceResult:
    prune: str
    quant: str
    measured: float | None  # A(Q→P) in −perplexity
    predicted: float  # κ · Σ_u [e_PQ(u) − e_QP(u)]
    kappa: float
    units: list[UnitOrderError]

    @property
    def interference(self) -> float | None:
        return None if self.measured is None else self.measured - self.predicted

    @property
    def order_dependent_units(self) -> int:
        return sum(u.owner_changed > 0 for u in self.units)

    def to_dict(self) -> dict:
        top = sorted(self.units, key=lambda u: -abs(u.error_p_then_q - u.error_q_then_p))[:10]
        return {
            "prune": self.prune,
            "quant": self.quant,
            "measured": self.measured,
            "predicted": self.predicted,
            "interference": self.interference,
            "kappa": self.kappa,
            "order_dependent_units": self.order_dependent_units,
            "units": len(self.units),
            "top_units": [asdict(u) for u in top],
        }


@torch.no_grad()
def dense_hessians(study: Study) -> dict[str, Tensor]:
    """Every unit's input Hessian on the dense model (one calibration pass, no compression)."""
    study.reset()
    lm = study.lm
    walk = calibrated_units(
        lm.model, compressible_units(lm.model), study.calibration_tokens(), progress=False
    )
    return {name: stats.hessian for name, _module, stats in walk}


def _errors(study: Study, steps: tuple[Method, ...], hessians: dict[str, Tensor]) -> dict:
    """Per unit: (output error, keep mask) of the model after ``steps``."""
    study.materialize(steps)
    out = {}
    for name, module in compressible_units(study.lm.model).items():
        delta = get_weight(module) - study.dense_weight(name)  # (out, in)
        error = 0.5 * float((delta @ hessians[name] * delta).sum())
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
    return InterferenceResult(prune.to_text(), quant.to_text(), measured, predicted, kappa, units)
