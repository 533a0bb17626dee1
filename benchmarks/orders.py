"""Both orders of calibrated pruning × quantization pairs on SmolLM2 (prefixes shared).

Protocol (defaults): calibration 128 × 512 tokens of Pride and Prejudice, seed 0, shared by
every calibrated step; perplexity on the first 8,192 tokens of Emma in 512-token windows.
Methods alone (time, peak RSS, perplexity) are in benchmarks/compress.py --eval.
Run: python benchmarks/orders.py [--samples 32 --seqlen 512]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from pqorder import api
from pqorder.data.calibration import CalibrationSpec
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.store import RunStore

PRUNE = ["magnitude:ratio=0.3", "wanda:ratio=0.3", "sparsegpt:ratio=0.3"]
QUANT = ["gptq:bits=4"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--prune", nargs="*", default=PRUNE)
    parser.add_argument("--quant", nargs="*", default=QUANT)
    args = parser.parse_args()
    calibration = CalibrationSpec("austen:pride", args.samples, args.seqlen, 0)
    protocol = PerplexityProtocol("austen:emma", 512, 8192, 4)
    print(f"calibration {calibration}; evaluation {protocol}", flush=True)
    # a fresh store and no prefix cache: every step is computed (each prefix once) and timed
    with tempfile.TemporaryDirectory() as tmp:
        study = api.open_study(
            "smollm2-135m",
            "bench-orders",
            protocol,
            calibration,
            RunStore(Path(tmp) / "runs.sqlite"),
            cache=False,
            progress=False,
        )
        start = time.perf_counter()
        grid = api.pair_grid(study, args.prune, args.quant)
    print(f"dense {grid.dense:.2f}; {time.perf_counter() - start:.0f} s in all")
    header = ("P", "Q", "P alone", "Q alone", "P→Q", "Q→P", "A(Q→P)")
    print("{:22s} {:14s} {:>8s} {:>8s} {:>8s} {:>8s} {:>8s}".format(*header))
    for r in grid.pairs:
        print(
            f"{r.prune:22s} {r.quant:14s} "
            f"{r.prune_alone:8.2f} {r.quant_alone:8.2f} {r.prune_then_quant:8.2f} "
            f"{r.quant_then_prune:8.2f} {r.advantage_q_first:+8.2f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
