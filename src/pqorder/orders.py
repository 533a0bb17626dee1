"""Both orders of every pruning × quantization pair, sharing each single-method prefix.

For a pair (P, Q) the metric is M = −perplexity, so the order advantage of quantizing first
is A(Q→P) = M(P∘Q) − M(Q∘P) = ppl(P then Q) − ppl(Q then P): positive when Q→P wins.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tqdm.auto import tqdm

from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.engine import apply_step, check_pipeline
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.models.loading import LoadedModel
from pqorder.pipeline import Pipeline, Step, needs_calibration
from pqorder.snapshot import restore_snapshot, take_snapshot


@dataclass(frozen=True)
class PairResult:
    prune: str
    quant: str
    prune_alone: float
    quant_alone: float
    prune_then_quant: float
    quant_then_prune: float

    @property
    def advantage_q_first(self) -> float:
        """A(Q→P) in −perplexity: how much quantize-then-prune beats prune-then-quantize."""
        return self.prune_then_quant - self.quant_then_prune

    def to_dict(self) -> dict:
        return {**asdict(self), "advantage_q_first": self.advantage_q_first}


@dataclass(frozen=True)
class GridResult:
    dense: float
    pairs: list[PairResult]
    protocol: PerplexityProtocol


def order_grid(
    lm: LoadedModel,
    prune_steps: Sequence[Step],
    quant_steps: Sequence[Step],
    protocol: PerplexityProtocol,
    calibration: CalibrationSpec | None = None,
    progress: bool = True,
) -> GridResult:
    """Perplexity of dense, each step alone, and both orders of every (P, Q) pair.

    Calibrated steps all see the same samples (``calibration`` or the default spec).
    """
    steps = Pipeline(tuple(prune_steps) + tuple(quant_steps))
    check_pipeline(lm, steps)
    tokens = None
    if needs_calibration(steps):
        tokens = sample_calibration(calibration or CalibrationSpec(), lm.tokenizer)
    dense = take_snapshot(lm)
    bar = tqdm(
        total=1 + 2 * (len(prune_steps) + len(quant_steps) + len(prune_steps) * len(quant_steps)),
        desc="order grid",
        disable=not progress,
    )

    def ppl() -> float:
        value = evaluate_perplexity(lm.model, lm.tokenizer, protocol, progress=False).perplexity
        bar.update()
        return value

    def first_then(first: Sequence[Step], then: Sequence[Step]) -> dict:
        """{(a, b): (ppl of a alone, ppl of a then b)}, with a's prefix computed once."""
        out = {}
        for a in first:
            restore_snapshot(lm, dense)
            apply_step(lm, a, tokens, progress=False)
            bar.update()
            alone = ppl()
            prefix = take_snapshot(lm)
            for b in then:
                restore_snapshot(lm, prefix)
                apply_step(lm, b, tokens, progress=False)
                out[(a.to_text(), b.to_text())] = (alone, ppl())
        return out

    dense_ppl = ppl()
    p_first = first_then(prune_steps, quant_steps)
    q_first = first_then(quant_steps, prune_steps)
    restore_snapshot(lm, dense)
    bar.close()
    pairs = [
        PairResult(
            p.to_text(),
            q.to_text(),
            prune_alone=p_first[(p.to_text(), q.to_text())][0],
            quant_alone=q_first[(q.to_text(), p.to_text())][0],
            prune_then_quant=p_first[(p.to_text(), q.to_text())][1],
            quant_then_prune=q_first[(q.to_text(), p.to_text())][1],
        )
        for p in prune_steps
        for q in quant_steps
    ]
    return GridResult(dense_ppl, pairs, protocol)
