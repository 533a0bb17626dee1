"""The evaluation protocol and calibration source a model's kind calls for.

Causal LMs: perplexity on text (default Emma), calibration text (default Pride and
Prejudice), or zero-shot tasks through lm-eval. Vision: top-1 on the model's own test split,
calibration images from its training split. Encoders: WordNet retrieval top-1 (or fidelity,
or graded-similarity Spearman), calibration text.
"""

from __future__ import annotations

import importlib.util

from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.data.images import is_image_source, parse_image_spec
from pqorder.data.offline_tasks import OFFLINE_TASKS
from pqorder.data.sources import disjoint_specs, hub_reachable
from pqorder.errors import AssetError, ConfigError
from pqorder.eval import Evaluator
from pqorder.eval.accuracy import AccuracyProtocol
from pqorder.eval.harness import LmEvalProtocol
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.eval.retrieval import RetrievalProtocol
from pqorder.eval.similarity import SimilarityProtocol
from pqorder.models.loading import default_dataset, model_kind

PROTOCOLS = ("perplexity", "lm-eval", "paper")
# --protocol paper: the SparseGPT / Wanda / GPTQ / QuaRot setting, so numbers are comparable.
PAPER_DATA, PAPER_SEQLEN = "wikitext2", 2048  # WikiText-2 raw test split, every token
PAPER_CALIBRATION = CalibrationSpec("c4", 128, 2048, 0)
OFFLINE_ALTERNATIVE = (
    "offline, use the default protocol (--protocol perplexity: Austen's Emma, calibration on "
    "Pride and Prejudice)"
)


def _check_paper(model: str) -> None:
    """--protocol paper needs a causal LM, the `datasets` package and the hub, before work."""
    kind = model_kind(model)
    if kind != "causal-lm":
        raise ConfigError(f"--protocol paper scores causal LMs; {model} is a {kind} model")
    if importlib.util.find_spec("datasets") is None:
        raise AssetError(
            "--protocol paper loads WikiText-2 and C4 through `datasets` (pip install "
            f"'pqorder[hub]'); {OFFLINE_ALTERNATIVE}"
        )
    if not hub_reachable():
        raise AssetError(
            "--protocol paper loads WikiText-2 and C4 from the Hugging Face hub, which is "
            f"unreachable here; {OFFLINE_ALTERNATIVE}"
        )


def protocol_for(
    model: str,
    data: str = "",
    max_samples: int = 0,
    task: str = "retrieval top-1",
    seqlen: int = 512,
    max_tokens: int | None = 8192,
    batch_size: int = 4,
    protocol: str = "perplexity",
    tasks: str = "",
    limit: int | None = None,
) -> Evaluator:
    """A validated protocol; empty ``data`` means the kind's default dataset. Causal LMs take
    ``protocol`` perplexity, lm-eval (``tasks`` comma-separated, default the offline ones) or
    paper (WikiText-2 test perplexity at seqlen 2048, every token: the preset fixes those)."""
    kind = model_kind(model)
    if protocol not in PROTOCOLS:
        raise ConfigError(f"unknown --protocol '{protocol}'; use one of {', '.join(PROTOCOLS)}")
    if protocol != "lm-eval" and (tasks or limit is not None):
        raise ConfigError("--tasks and --limit apply to --protocol lm-eval")
    if protocol == "paper":
        if data:
            raise ConfigError("--protocol paper evaluates on WikiText-2 test: drop --data")
        _check_paper(model)
        evaluator = PerplexityProtocol(PAPER_DATA, PAPER_SEQLEN, None, batch_size)
        evaluator.validate()
        return evaluator
    if protocol == "lm-eval":
        if kind != "causal-lm":
            raise ConfigError(f"--protocol lm-eval scores causal LMs; {model} is a {kind} model")
        names = tuple(t.strip() for t in tasks.split(",") if t.strip()) if tasks else OFFLINE_TASKS
        evaluator = LmEvalProtocol(names, limit, batch_size=batch_size)
        evaluator.validate()
        return evaluator
    if kind == "vision":
        data = data or default_dataset(model)
        if data is None:
            raise ConfigError(f"{model} has no offline evaluation set: pass --data")
        evaluator = AccuracyProtocol(data, max_samples or None)
    elif kind == "encoder" and task == "similarity":  # max_samples: pairs per grade
        evaluator = SimilarityProtocol(data or "wordnet:noun", max_samples or 250, 0)
    elif kind == "encoder":
        evaluator = RetrievalProtocol(data or "wordnet:noun", max_samples or 1000, 0, task)
    else:
        evaluator = PerplexityProtocol(data or "austen:emma", seqlen, max_tokens, batch_size)
    evaluator.validate()
    return evaluator


def calibration_source(model: str) -> str:
    """The default calibration source of a model."""
    if model_kind(model) == "vision" and (data := default_dataset(model)) is not None:
        return f"{data.split(':')[0]}:train"
    return "austen:pride"


def calibration_for(
    model: str,
    source: str = "",
    n_samples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    eval_data: str = "",
    protocol: str = "perplexity",
) -> CalibrationSpec:
    """The one place a calibration spec is made: the model kind's default source when none is
    given (its training images for vision models, Pride and Prejudice for text), text kept
    disjoint from the evaluation text, images only from a training split; validated. Under
    ``protocol`` paper: C4, 128 x 2048 tokens, seed 0, whatever the other arguments say."""
    if protocol == "paper":
        if source:
            raise ConfigError(
                "--protocol paper calibrates on C4 (128 x 2048, seed 0): drop --calib"
            )
        _check_paper(model)
        return PAPER_CALIBRATION
    source = source or calibration_source(model)
    if is_image_source(source):
        if parse_image_spec(source, "train")[1] != "train":
            raise ConfigError(f"calibration images come from a training split, not '{source}'")
    else:
        source, _ = disjoint_specs(source, eval_data or "austen:emma")
    spec = CalibrationSpec(source, n_samples, seqlen, seed)
    spec.validate()
    return spec


def sample_for(
    lm: LoadedModel, spec: CalibrationSpec | None = None
) -> tuple[CalibrationSpec, Tensor]:
    """Calibration samples for ``lm`` (``spec``, or the model kind's default), checked against
    the model's context length: every path that calibrates draws its samples here."""
    spec = spec or calibration_for(lm.name)
    spec.validate(lm.max_context)
    return spec, sample_calibration(spec, lm.tokenizer)
