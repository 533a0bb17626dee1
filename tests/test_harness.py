"""Zero-shot tasks through lm-evaluation-harness: offline task files, the real lm-eval path on
the live model (checked against pqorder's own scoring of the same documents), studies on task
metrics, and every bad input refused in one line before work."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from pqorder.analysis.metric_agreement import MetricAgreement, run_metric_agreement
from pqorder.cli import app
from pqorder.data.calibration import CalibrationSpec
from pqorder.data.offline_tasks import OFFLINE_TASKS, definition_docs, lastword_docs, task_size
from pqorder.errors import ConfigError
from pqorder.eval.harness import LmEvalProtocol
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.eval.select import protocol_for
from pqorder.pipeline import parse_step
from pqorder.study import Study

LIMIT = 12


def test_offline_task_files_are_deterministic_and_well_formed():
    words = lastword_docs()
    assert words == lastword_docs() and len(words) == task_size("austen_lastword") == 952
    for doc in words:
        *context, last = doc["text"].split(" ")
        assert 39 <= len(context) <= 149 and last.isalpha() and len(last) >= 3
    items = definition_docs()
    assert len(items) == task_size("wordnet_definitions") == 1000
    assert items == definition_docs()
    for item in items:
        assert len(item["choices"]) == 4 == len(set(item["choices"]))
    labels = [item["label"] for item in items]
    assert all(150 < labels.count(k) < 350 for k in range(4))  # the answer's place is drawn


def _greedy_hits(lm, docs) -> list[bool]:
    """pqorder's own scoring of the last-word task: is the last word the greedy output?"""
    hits = []
    for doc in docs:
        *context, last = doc["text"].split(" ")
        ctx = lm.tokenizer(" ".join(context), add_special_tokens=False).input_ids
        whole = lm.tokenizer(" ".join(context) + " " + last, add_special_tokens=False).input_ids
        with torch.no_grad():
            logits = lm.model(torch.tensor([whole])).logits[0]
        hits.append(
            bool((logits[len(ctx) - 1 : -1].argmax(-1) == torch.tensor(whole[len(ctx) :])).all())
        )
    return hits


def _choice_hits(lm, docs) -> list[bool]:
    """pqorder's own scoring of the definitions task: the highest-likelihood choice."""
    hits = []
    for doc in docs:
        context = f"Definition: {doc['definition']}\nWord:"
        ctx = lm.tokenizer(context, add_special_tokens=False).input_ids
        scores = []
        for choice in doc["choices"]:
            whole = lm.tokenizer(context + " " + choice, add_special_tokens=False).input_ids
            with torch.no_grad():
                logp = torch.log_softmax(lm.model(torch.tensor([whole])).logits[0].double(), -1)
            target = torch.tensor(whole[len(ctx) :])
            scores.append(float(logp[len(ctx) - 1 : -1].gather(1, target[:, None]).sum()))
        hits.append(max(range(4), key=scores.__getitem__) == doc["label"])
    return hits


@pytest.mark.slow
def test_lm_eval_scores_the_live_model_as_pqorder_does(tiny):
    """Both offline tasks through lm-eval's HFLM + simple_evaluate on the first LIMIT documents
    equal pqorder's own greedy / likelihood scoring of those documents, and the details hold
    per-task values, stderrs, sizes and versions."""
    protocol = LmEvalProtocol(OFFLINE_TASKS, limit=LIMIT, batch_size=8)
    protocol.validate()
    protocol.prepare(tiny)
    value = protocol.score(tiny)
    details = protocol.details()
    tasks = details["tasks"]
    want_words = sum(_greedy_hits(tiny, lastword_docs()[:LIMIT])) / LIMIT
    want_defs = sum(_choice_hits(tiny, definition_docs()[:LIMIT])) / LIMIT
    assert tasks["austen_lastword"]["value"] == pytest.approx(want_words)
    assert tasks["wordnet_definitions"]["value"] == pytest.approx(want_defs)
    assert value == pytest.approx((want_words + want_defs) / 2)
    for r in tasks.values():
        assert r["n"] == LIMIT and r["version"] is not None and r["metric"] == "acc"
    assert details["seconds"] > 0 and details["lm_eval"].startswith("0.4")


@pytest.mark.slow
def test_metric_agreement_compresses_each_pipeline_once(tiny, tmp_path):
    """A pair on perplexity and on a task: every pipeline is compressed once and evaluated
    under both metrics; runs carry the task details; the agreement is one pair's verdict."""
    from pqorder.store import RunStore

    store = RunStore(tmp_path / "runs.sqlite")
    tasks = LmEvalProtocol(("wordnet_definitions",), limit=8, batch_size=8)
    tasks.validate()
    study = Study(
        tiny, PerplexityProtocol(max_tokens=1024), CalibrationSpec("austen:pride", 4, 64, 0), store
    )
    prune, quant = parse_step("magnitude:ratio=0.5"), parse_step("rtn:bits=3,group=64")
    result = run_metric_agreement(study, [prune], [quant], [tasks], progress=False)
    assert study.spend.applied_steps == 2 + 2 * 1  # P, Q, then the second step of each order
    assert [g.metric for g in result.grids] == ["perplexity", "lm-eval acc"]
    assert len(result.agrees()) == 1 and result.noise[0] == [None]
    assert result.noise[1][0] is not None and result.noise[1][0] > 0
    task_runs = [r for r in store.query() if r.metric_name == "lm-eval acc"]
    assert len(task_runs) == 5  # dense, P, Q, P→Q, Q→P
    assert all(r.details["tasks"]["wordnet_definitions"]["n"] == 8 for r in task_runs)
    again = MetricAgreement.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.table() == result.table()


def _on_definitions(model, limit: int) -> list[str]:
    """CLI flags: ``model`` scored on the first ``limit`` WordNet definitions through lm-eval."""
    return ["-m", str(model), "--protocol", "lm-eval", "--tasks", "wordnet_definitions",
            "--limit", str(limit)]  # fmt: skip


def test_cli_eval_with_lm_eval_protocol(tiny_dir):
    result = CliRunner().invoke(app, ["eval", *_on_definitions(tiny_dir, 4), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output[result.output.index("{") :])
    task = out["tasks"]["wordnet_definitions"]
    assert task["n"] == 4 and 0 <= task["value"] <= 1 and out["lm-eval acc"] == task["value"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"protocol": "lm-eval", "limit": 0}, "--limit must be at least 1"),
        ({"protocol": "lm-eval", "tasks": "austen_lastwrd"}, "did you mean austen_lastword"),
        ({"protocol": "lm-eval", "tasks": " , "}, "--tasks is empty"),
        ({"protocol": "bleu"}, "unknown --protocol 'bleu'"),
        ({"tasks": "austen_lastword"}, "apply to --protocol lm-eval"),
    ],
)
def test_bad_task_input_is_refused_in_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as err:
        protocol_for("smollm2-135m", **kwargs)
    assert "\n" not in str(err.value)


def test_hub_task_offline_names_the_offline_tasks(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="austen_lastword, wordnet_definitions"):
        protocol_for("smollm2-135m", protocol="lm-eval", tasks="arc_easy")


def test_study_metrics_needs_a_task_protocol(tiny_dir):
    """Without --protocol lm-eval there is no second metric: refused before any work."""
    result = CliRunner().invoke(app, ["study", "metrics", "-m", str(tiny_dir)])
    assert isinstance(result.exception, ConfigError)  # pqorder's main prints it, exits 2
    assert "pass --protocol lm-eval" in str(result.exception) and "\n" not in str(result.exception)


def test_models_that_cannot_be_scored_are_refused():
    for model in ("minilm", "digits-cnn"):
        with pytest.raises(ConfigError, match="scores causal LMs"):
            protocol_for(model, protocol="lm-eval")


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [
        [
            "recommend",
            "--methods",
            "magnitude:ratio=0.3",
            "--methods",
            "rtn:bits=4,group=64",
            "--bits",
            "3,4,5",
        ],
        [
            "sweep",
            "--prune",
            "magnitude",
            "--ratios",
            "0.3",
            "--quant",
            "rtn:group=64",
            "--bits",
            "4",
        ],
    ],
    ids=["recommend", "sweep"],
)
def test_order_analyses_run_on_task_metrics(tiny_dir, tmp_path, command):
    """recommend and sweep on an lm-eval metric (two-block SmolLM2, 8 definitions)."""
    args = [
        *command,
        *_on_definitions(tiny_dir, 8),
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "64",
        "--store",
        str(tmp_path / "runs.sqlite"),
        "--no-cache",
    ]
    if command[0] == "sweep":
        args += ["--plot", str(tmp_path / "sweep.png")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    from pqorder.store import RunStore

    runs = RunStore(tmp_path / "runs.sqlite").query()
    assert runs and {r.metric_name for r in runs} == {"lm-eval acc"}
    assert all(r.details["tasks"]["wordnet_definitions"]["n"] == 8 for r in runs if r.ok)
