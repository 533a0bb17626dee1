"""Quality table on SmolLM2: every method alone and both orders of a few pairs.

Protocol: calibration 128 × 512 tokens of Pride and Prejudice (seed 0, shared by every
calibrated step); perplexity on the first 8,192 tokens of Emma in 512-token windows.
Prefixes are reused: each first step is applied once and shared by its orders.
Run: python benchmarks/quality.py [--samples 128 --seqlen 512]
"""

from __future__ import annotations

import argparse
import time

from pqorder.data.calibration import CalibrationSpec
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.models.loading import load_model
from pqorder.orders import order_grid
from pqorder.pipeline import parse_pipeline, parse_step, run_pipeline
from pqorder.snapshot import restore_snapshot, take_snapshot

ALONE = [
    "magnitude:ratio=0.3",
    "magnitude:ratio=0.5",
    "magnitude:nm=2:4",
    "wanda:ratio=0.3",
    "wanda:ratio=0.5",
    "wanda:nm=2:4",
    "sparsegpt:ratio=0.3",
    "sparsegpt:ratio=0.5",
    "sparsegpt:nm=2:4",
    "rtn:bits=3",
    "rtn:bits=4",
    "rtn:bits=8",
    "gptq:bits=3",
    "gptq:bits=4",
    "gptq:bits=8",
]
PAIRS = (["magnitude:ratio=0.3", "wanda:ratio=0.3", "sparsegpt:ratio=0.3"], ["gptq:bits=4"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--skip-alone", action="store_true", help="only the order pairs")
    parser.add_argument("--skip-pairs", action="store_true", help="only methods alone")
    parser.add_argument("--only", nargs="*", help="steps to run alone (default: the table)")
    args = parser.parse_args()
    calibration = CalibrationSpec("austen:pride", args.samples, args.seqlen, 0)
    protocol = PerplexityProtocol("austen:emma", 512, 8192, 4)
    lm = load_model("smollm2-135m")
    dense = take_snapshot(lm)
    print(f"calibration {calibration}; evaluation {protocol}", flush=True)
    ppl = evaluate_perplexity(lm.model, lm.tokenizer, protocol, progress=False).perplexity
    print(f"{'dense':28s} {ppl:9.2f}", flush=True)
    if not args.skip_alone:
        for text in args.only or ALONE:
            restore_snapshot(lm, dense)
            start = time.perf_counter()
            run_pipeline(lm, parse_pipeline(text), calibration, progress=False)
            seconds = time.perf_counter() - start
            ppl = evaluate_perplexity(lm.model, lm.tokenizer, protocol, progress=False).perplexity
            print(f"{text:28s} {ppl:9.2f}   ({seconds:.0f} s)", flush=True)
    if args.skip_pairs:
        return
    restore_snapshot(lm, dense)
    prune, quant = ([parse_step(t) for t in group] for group in PAIRS)
    grid = order_grid(lm, prune, quant, protocol, calibration, progress=False)
    print(
        f"{'P':22s} {'Q':14s} {'P alone':>8s} {'Q alone':>8s} "
        f"{'P→Q':>8s} {'Q→P':>8s} {'A(Q→P)':>8s}"
    )
    for r in grid.pairs:
        print(
            f"{r.prune:22s} {r.quant:14s} {r.prune_alone:8.2f} {r.quant_alone:8.2f} "
            f"{r.prune_then_quant:8.2f} {r.quant_then_prune:8.2f} {r.advantage_q_first:+8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
