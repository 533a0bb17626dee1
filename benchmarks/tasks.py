"""Order effects on zero-shot tasks vs perplexity: SmolLM2 pair grid on both offline tasks.

Pairs: SparseGPT and Wanda at 50% × GPTQ and RTN 4-bit g128, both orders, plus dense and each
method alone; every pipeline compressed once and evaluated on the offline lm-eval tasks
(first ``--limit`` documents of each) and on perplexity (Emma, 8,192 tokens, seqlen 512).
Calibration: 32 × 256 tokens of Pride and Prejudice, seed 0. Resumable: runs go to
``--store`` and a rerun reuses them. Prints each run's task accuracies with 95% intervals,
the agreement table, and the time per evaluation. The same grid as
``pqorder study metrics --protocol lm-eval --limit 200 --prune sparsegpt:ratio=0.5 --prune
wanda:ratio=0.5 --quant gptq:bits=4,group=128 --quant rtn:bits=4,group=128
--calib-samples 32 --calib-seqlen 256``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pqorder import api
from pqorder.data.calibration import CalibrationSpec
from pqorder.eval.harness import LmEvalProtocol
from pqorder.eval.perplexity import PerplexityProtocol

PRUNE = ["sparsegpt:ratio=0.5", "wanda:ratio=0.5"]
QUANT = ["gptq:bits=4,group=128", "rtn:bits=4,group=128"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=200, help="documents per task")
    parser.add_argument("--store", type=Path, default=Path("tasks.sqlite"))
    args = parser.parse_args()
    tasks = LmEvalProtocol(limit=args.limit, batch_size=4)  # the CLI default batch
    study = api.open_study(
        "smollm2-135m",
        "tasks-agreement",
        tasks,
        CalibrationSpec("austen:pride", 32, 256, 0),
        args.store,
        cache=False,
    )
    result = api.metric_agreement(study, PRUNE, QUANT, [PerplexityProtocol()])
    print("\n".join(result.table().markdown()))
    print("\n| pipeline | perplexity | " + " | ".join(tasks.tasks) + " | task eval s |")
    print("|---|---|" + "---|" * len(tasks.tasks) + "---|")
    runs = study.store.query(study="tasks-agreement")
    ppl = {r.pipeline: r.value for r in runs if r.metric_name == "perplexity"}
    for r in runs:
        if r.metric_name != tasks.name or not r.ok:
            continue
        cells = [
            f"{t['value']:.3f} ± {1.96 * t['stderr']:.3f}" for t in r.details["tasks"].values()
        ]
        print(
            f"| {r.pipeline} | {ppl.get(r.pipeline, float('nan')):.2f} | "
            f"{' | '.join(cells)} | {r.details['seconds']:.0f} |"
        )


if __name__ == "__main__":
    main()
