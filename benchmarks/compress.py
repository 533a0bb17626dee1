"""Wall time and peak RSS of every method on SmolLM2 (each in its own process).

Protocol: all 210 decoder Linear layers; calibration 128 × 512 tokens of Pride and Prejudice,
seed 0; 2 CPU threads unless --threads says otherwise. With --eval, also the perplexity on
the first 8,192 tokens of Emma in 512-token windows. Run: python benchmarks/compress.py
(``--set rotation`` for rotation, QuaRot presets, SLEB and structured pruning).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

STEP_SETS = {
    "methods": [
        "magnitude:ratio=0.5",
        "rtn:bits=4",
        "rtn:bits=3",
        "wanda:ratio=0.5",
        "sparsegpt:ratio=0.5",
        "wanda:nm=2:4",
        "sparsegpt:nm=2:4",
        "gptq:bits=4",
        "gptq:bits=3",
    ],
    "rotation": [
        "rotate",
        "quarot:weights=rtn,preset=W4A16",
        "quarot:weights=rtn,preset=W4A4KV4",
        "actquant:bits=4,kv_bits=4",
        "structured:target=channels,ratio=0.25",
        "structured:target=heads,ratio=0.25,score=activation",
        "sleb:blocks=3",
    ],
}


def measure(step: str, samples: int, seqlen: int, threads: int, evaluate: bool) -> dict:
    """Load, compress with one step, report time and this process's peak RSS."""
    import torch

    from pqorder.data.calibration import CalibrationSpec
    from pqorder.models.loading import load_model
    from pqorder.pipeline import parse_pipeline, run_pipeline

    torch.set_num_threads(threads)
    lm = load_model("smollm2-135m")
    loaded_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    result = run_pipeline(
        lm, parse_pipeline(step), CalibrationSpec("austen:pride", samples, seqlen, 0), False
    )
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ppl = None
    if evaluate:
        from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity

        protocol = PerplexityProtocol("austen:emma", 512, 8192, 4)
        ppl = evaluate_perplexity(lm.model, lm.tokenizer, protocol, progress=False).perplexity
    return {
        "step": step,
        "perplexity": ppl,
        "seconds": seconds,
        "peak_rss_mb": peak,
        "rss_after_load_mb": loaded_rss,
        "sparsity": result.records[0].sparsity,
        "tokens": samples * seqlen if result.calibration else 0,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--set", choices=sorted(STEP_SETS), default="methods")
    parser.add_argument("--steps", nargs="*", help="steps to measure (default: the --set)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval", action="store_true", help="also report perplexity")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.samples, args.seqlen, args.threads, args.eval)))
        return
    fp32_mb = 134.5e6 * 4 / 2**20
    print(
        f"SmolLM2-135M, fp32 weights {fp32_mb:.0f} MB; calibration {args.samples} × {args.seqlen}"
    )
    print(
        f"{'step':28s} {'seconds':>8s} {'peak RSS MB':>12s} {'after load':>11s} "
        f"{'calib tok/s':>11s} {'perplexity':>10s}"
    )
    for step in args.steps or STEP_SETS[args.set]:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            step,
            "--samples",
            str(args.samples),
            "--seqlen",
            str(args.seqlen),
            "--threads",
            str(args.threads),
            *(["--eval"] if args.eval else []),
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rate = f"{r['tokens'] / r['seconds']:.0f}" if r["tokens"] else "-"
        ppl = f"{r['perplexity']:.2f}" if r["perplexity"] is not None else "-"
        print(
            f"{step:28s} {r['seconds']:8.1f} {r['peak_rss_mb']:12.0f} "
            f"{r['rss_after_load_mb']:11.0f} {rate:>11s} {ppl:>10s}",
            flush=True,
        )


if __name__ == "__main__":
    main()
