"""The Python API behind every CLI command, for notebooks and scripts.

from pqorder import api
study = api.open_study("smollm2-135m", name="demo")
rec = api.recommend(study, ["sparsegpt:ratio=0.3", "gptq:bits=4"])
res = api.search(study, ["sparsegpt:ratio=0.3", "gptq:bits=4"], pih_order=rec.order)
sw = api.sweep(study, ["sparsegpt"], [0.1, 0.3], "rtn:group=128", [3, 4])
api.report(study, "out/report")
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pqorder.analysis.intensity import CurveOptions
from pqorder.analysis.lora_study import LORA, QUANT, LoraStudy, plot_lora, run_lora_study
from pqorder.analysis.lora_study import PRUNER as LORA_PRUNER
from pqorder.analysis.lora_study import RATIOS as LORA_RATIOS
from pqorder.analysis.metric_agreement import MetricAgreement, run_metric_agreement
from pqorder.analysis.mpq import BUDGETS, STEP, MPQStudy, plot_mpq, run_mpq_study
from pqorder.analysis.pairs import PairGrid
from pqorder.analysis.pairs import pair_grid as _pair_grid
from pqorder.analysis.predictor import PredictorFit
from pqorder.analysis.recommend import Recommendation
from pqorder.analysis.recommend import recommend as _recommend
from pqorder.analysis.rotation_study import PRUNERS, RATIOS, RotationStudy, run_rotation_study
from pqorder.analysis.search import SearchResult, search_orders
from pqorder.analysis.share import PRUNER as SHARE_PRUNER
from pqorder.analysis.share import PRUNES as SHARE_PRUNES
from pqorder.analysis.share import SHARE, SHARES, ShareStudy, plot_share, run_share_study
from pqorder.analysis.stages import FIRST, MIDDLE, TOTAL, StagesStudy, plot_stages, run_stages_study
from pqorder.analysis.stages import PRUNERS as STAGE_PRUNERS
from pqorder.analysis.sweep import SweepResult, plot_sweep, run_sweep
from pqorder.analysis.units import InterferenceResult, analyze_interference, dense_hessians
from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import ConfigError
from pqorder.eval import Evaluator
from pqorder.eval.select import calibration_for, protocol_for
from pqorder.executors import Executor, executor_spec
from pqorder.hardware import Placement
from pqorder.methods.base import Method
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_step
from pqorder.plan import check_run
from pqorder.prefix_cache import PrefixCache
from pqorder.report import write_report
from pqorder.store import RunStore
from pqorder.study import Study


def open_study(
    model: str = "smollm2-135m",
    name: str = "study",
    protocol: Evaluator | None = None,
    calibration: CalibrationSpec | None = None,
    store: RunStore | str | Path | None = None,
    cache: PrefixCache | bool = True,
    sequential: bool = False,
    progress: bool = True,
    placement: Placement | None = None,
    steps: Sequence[str | Method] = (),
    executor: str | None = None,
    workers: int = 1,
    ray_address: str | None = None,
) -> Study:
    """Load ``model`` and open a study that stores runs (default store) and reuses prefixes.

    The protocol and calibration default to the model kind's (perplexity on Emma for LMs,
    top-1 on the own test split for vision models, WordNet retrieval for encoders).
    ``placement`` (``pqorder.hardware.resolve_hardware("cuda", "bfloat16")``) says where the
    model runs and in what dtype (default: CPU, float32). ``steps``, the methods the study
    will apply, when given: a study whose memory plan does not fit this machine is refused
    (``pqorder.plan.check_run``) before the model is loaded. ``executor`` (local, process,
    ray; default process for several ``workers``, else local) says where the study's jobs
    run; ``ray_address`` joins an existing Ray cluster instead of starting a local instance.
    """
    spec = executor_spec(executor, workers, ray_address)
    protocol = protocol or protocol_for(model)
    protocol.validate()
    calibration = calibration or calibration_for(model)
    calibration.validate()
    if not isinstance(store, RunStore):
        store = RunStore(store)
    if cache is True:
        cache = PrefixCache()
    if steps:
        check_run(model, _steps(steps), placement or Placement(), calibration, protocol)
    lm = load_model(model, placement)
    return Study(
        lm, protocol, calibration, store, cache or None, name, sequential, progress, Executor(spec)
    )


def _steps(steps: Sequence[str | Method]) -> list[Method]:
    return [parse_step(s) if isinstance(s, str) else s for s in steps]


def recommend(
    study: Study,
    steps: Sequence[str | Method],
    options: CurveOptions | None = None,
    collapse_factor: float = 3.0,
    prior: PredictorFit | None = None,
    every: int = 5,
) -> Recommendation:
    rec = _recommend(study, _steps(steps), options, collapse_factor, prior, every)
    _save(study, "recommend", rec.to_dict())
    return rec


def search(
    study: Study,
    steps: Sequence[str | Method],
    pih_order: Sequence[str] | None = None,
    beam_width: int = 3,
    strategy: str = "auto",
) -> SearchResult:
    result = search_orders(study, _steps(steps), pih_order, beam_width, strategy)
    _save(study, "search", result.to_dict())
    return result


def sweep(
    study: Study,
    pruners: Sequence[str],
    ratios: Sequence[float],
    quantizer: str,
    bits: Sequence[int],
    plot: Path | str | None = None,
    options: CurveOptions | None = None,
) -> SweepResult:
    result = run_sweep(study, pruners, ratios, quantizer, bits, options, study.progress)
    _save(study, "sweep", result.to_dict())
    if plot is not None:
        plot_sweep(result, Path(plot))
    return result


def pair_grid(
    study: Study, prune: Sequence[str | Method], quant: Sequence[str | Method]
) -> PairGrid:
    """Both orders of every (pruning, quantization) pair; every run stored."""
    result = _pair_grid(study, _steps(prune), _steps(quant), study.progress)
    _save(study, "grid", result.to_dict())
    return result


def metric_agreement(
    study: Study,
    prune: Sequence[str | Method],
    quant: Sequence[str | Method],
    protocols: Sequence[Evaluator],
) -> MetricAgreement:
    """The pair grid under the study's metric and each of ``protocols`` (every pipeline
    compressed once), and whether the better order agrees across them."""
    result = run_metric_agreement(study, _steps(prune), _steps(quant), protocols, study.progress)
    _save(study, "metric agreement", result.to_dict())
    return result


def rotation_study(
    study: Study,
    pruners: Sequence[str] = PRUNERS,
    ratios: Sequence[float] = RATIOS,
    rotation: str = "rotate",
) -> RotationStudy:
    """Pruning with and without a prior rotation (the paper's rotation finding) on this model."""
    result = run_rotation_study(study, pruners, ratios, rotation, study.progress)
    _save(study, "rotation", result.to_dict())
    return result


def stages_study(
    study: Study,
    pruners: Sequence[str] = STAGE_PRUNERS,
    total: float = TOTAL,
    first: Sequence[float] = FIRST,
    middle: str = MIDDLE,
    plot: Path | str | None = None,
) -> StagesStudy:
    """``total`` pruning split into two stages around ``middle``, front-loaded to back-loaded,
    per pruner (the paper's multi-stage finding: the stronger stage later wins); runs stored."""
    result = run_stages_study(study, pruners, total, first, middle, study.progress)
    _save(study, "stages", result.to_dict())
    if plot is not None:
        plot_stages(result, Path(plot))
    return result


def mpq_study(
    study: Study,
    step: str = STEP,
    budgets: Sequence[float] = BUDGETS,
    plot: Path | str | None = None,
) -> MPQStudy:
    """Mixed precision as an order problem: ``step`` (an mpq template) at each average
    budget, progressive, regressive and all at once, plus each half of the allocation alone
    (the paper: high bits first wins, more so as compression grows); runs stored."""
    result = run_mpq_study(study, step, budgets, study.progress)
    _save(study, "mpq", result.to_dict())
    if plot is not None:
        plot_mpq(result, Path(plot))
    return result


def lora_study(
    study: Study,
    pruner: str = LORA_PRUNER,
    ratios: Sequence[float] = LORA_RATIOS,
    quant: str = QUANT,
    lora: str = LORA,
    plot: Path | str | None = None,
) -> LoraStudy:
    """Where LoRA recovery sits in the order (P→Q→L, Q→P→L, P→L→Q, Q→L→P, and P→Q, Q→P) at
    each pruning ratio, against the intensity gap (the paper: stronger later survives
    recovery); runs stored."""
    result = run_lora_study(study, pruner, ratios, quant, lora, study.progress)
    _save(study, "lora", result.to_dict())
    if plot is not None:
        plot_lora(result, Path(plot))
    return result


def share_study(
    study: Study,
    pruner: str = SHARE_PRUNER,
    shares: Sequence[float] = SHARES,
    prunes: Sequence[float] = SHARE_PRUNES,
    share: str = SHARE,
    plot: Path | str | None = None,
) -> ShareStudy:
    """Parameter sharing (Basis Sharing) × pruning in both orders at every pair of ratios, each
    step alone for the intensity gap (the paper: the stronger method later wins); runs stored."""
    result = run_share_study(study, pruner, shares, prunes, share, study.progress)
    _save(study, "share", result.to_dict())
    if plot is not None:
        plot_share(result, Path(plot))
    return result


def interference(
    study: Study, pairs: Sequence[tuple[str | Method, str | Method]]
) -> list[InterferenceResult]:
    """Order-dependent units and interference Δ for each (pruning, quantization) pair."""
    parsed = [_steps([p, q]) for p, q in pairs]
    for step in (s for pair in parsed for s in pair):
        if not step.keeps_units:
            raise ConfigError(
                f"interference compares each unit with the dense model; {step.name} "
                "rotates or removes units, so it has no unit-by-unit interference"
            )
    hessians = dense_hessians(study)
    results = []
    for prune, quant in parsed:
        result = analyze_interference(study, prune, quant, hessians)
        _save(study, "interference", result.to_dict())
        results.append(result)
    return results


def report(study: Study | str, folder: Path | str, store: RunStore | None = None) -> Path:
    """Markdown + HTML report of a study (by object or name) from the store."""
    name = study if isinstance(study, str) else study.name
    store = store or (RunStore() if isinstance(study, str) else study.store)
    md, _html = write_report(store, name, Path(folder))
    return md


def _save(study: Study, kind: str, payload: dict) -> None:
    if study.store is not None:
        study.store.put_analysis(study.name, kind, payload)
