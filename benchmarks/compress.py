"""Wall time and peak RSS of every method on SmolLM2 (each in its own process).

Protocol: all 210 decoder Linear layers; calibration 128 × 512 tokens of Pride and Prejudice,
seed 0; 2 CPU threads unless --threads says otherwise. Run: python benchmarks/compress.py
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

DEFAULT_STEPS = [
    "magnitude:ratio=0.5",
    "rtn:bits=4,group=128",
    "wanda:ratio=0.5",
    "sparsegpt:ratio=0.5",
    "gptq:bits=4,group=128",
]


def measure(step: str, samples: int, seqlen: int, threads: int) -> dict:
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
    return {
        "step": step,
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_load_mb": loaded_rss,
        "sparsity": result.records[0].sparsity,
        "tokens": samples * seqlen if result.calibration else 0,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", nargs="*", default=DEFAULT_STEPS)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.samples, args.seqlen, args.threads)))
        return
    fp32_mb = 134.5e6 * 4 / 2**20
    print(
        f"SmolLM2-135M, fp32 weights {fp32_mb:.0f} MB; calibration {args.samples} × {args.seqlen}"
    )
    print(f"{'step':28s} {'seconds':>8s} {'peak RSS MB':>12s} {'after load':>11s} {'tok/s':>8s}")
    for step in args.steps:
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
        ]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        rate = f"{r['tokens'] / r['seconds']:.0f}" if r["tokens"] else "-"
        print(
            f"{step:28s} {r['seconds']:8.1f} {r['peak_rss_mb']:12.0f} "
            f"{r['rss_after_load_mb']:11.0f} {rate:>8s}",
            flush=True,
        )


if __name__ == "__main__":
    main()
