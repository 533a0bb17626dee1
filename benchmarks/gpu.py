"""SparseGPT 50% + GPTQ 4-bit on SmolLM2: placements side by side (each row in its own process).

Rows: CPU float32 with and without offload (offload there runs the same code path with host
and device the same: its cost, not a saving), and, when a CUDA GPU is present, the GPU in
bfloat16 and float32, offload on and off. Per row: load, compress and evaluation seconds, the
process's peak RSS, peak device memory (CUDA), and perplexity. Protocol: calibration
``--samples`` × ``--seqlen`` tokens of Pride and Prejudice, seed 0; perplexity on the first
8,192 tokens of Emma in 512-token windows (batch 4). Peak RSS is read after compression
(load, floor pass, compression) and at the end (with the evaluation). The floor is one
calibration forward pass of the same tokens on the same placement (``floor s``): compression
time / floor is the ratio printed.
Run: python benchmarks/gpu.py [--rows cpu] [--samples 128 --seqlen 512].
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

PIPELINE = "sparsegpt:ratio=0.5 > gptq:bits=4,group=128"
ROWS = {
    "cpu": [("cpu", "float32", False), ("cpu", "float32", True)],
    "gpu": [
        ("cuda", "bfloat16", False),
        ("cuda", "bfloat16", True),
        ("cuda", "float32", False),
        ("cuda", "float32", True),
    ],
}


def measure(device: str, dtype: str, offload: bool, samples: int, seqlen: int) -> dict:
    """One row, in this process: load, one calibration pass (the floor), compress, evaluate."""
    import torch

    from pqorder.data.calibration import CalibrationSpec
    from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
    from pqorder.eval.select import sample_for
    from pqorder.hardware import resolve_hardware
    from pqorder.layerwise import capture_block_inputs, run_block
    from pqorder.models.adapter import decoder_blocks
    from pqorder.models.loading import load_model
    from pqorder.offload import resident
    from pqorder.pipeline import parse_pipeline, run_pipeline

    cuda = device.startswith("cuda")
    placement = resolve_hardware(device, dtype, offload)
    start = time.perf_counter()
    lm = load_model("smollm2-135m", placement)
    loaded = time.perf_counter() - start
    calibration = CalibrationSpec("austen:pride", samples, seqlen, 0)
    _, tokens = sample_for(lm, calibration)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    with torch.no_grad():
        start = time.perf_counter()
        inputs = capture_block_inputs(lm.model, tokens, 8)
        for block in decoder_blocks(lm.model)[1]:
            with resident(block, lm.placement):
                inputs.hidden = run_block(block, inputs)
        sync()
        floor = time.perf_counter() - start
    del inputs
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run_pipeline(lm, parse_pipeline(PIPELINE), calibration, progress=False)
    sync()
    compressed = time.perf_counter() - start
    device_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    compress_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # before eval
    start = time.perf_counter()
    protocol = PerplexityProtocol("austen:emma", 512, 8192, 4)
    ppl = evaluate_perplexity(lm.model, lm.tokenizer, protocol, progress=False).perplexity
    sync()
    return {
        "placement": lm.placement.describe(),
        "load s": round(loaded, 1),
        "floor s": round(floor, 2),
        "compress s": round(compressed, 1),
        "x floor": round(compressed / floor, 1),
        "eval s": round(time.perf_counter() - start, 1),
        "peak RSS compress GiB": round(compress_rss, 2),
        "peak RSS GiB": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "peak device GiB": None if device_peak is None else round(device_peak, 2),
        "perplexity": round(ppl, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="cpu,gpu", help="cpu, gpu or both (comma-separated)")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--row", help=argparse.SUPPRESS)  # device,dtype,offload: one row here
    args = parser.parse_args()
    if args.row:
        device, dtype, offload = args.row.split(",")
        result = measure(device, dtype, offload == "1", args.samples, args.seqlen)
        print(json.dumps(result))
        return
    import torch

    rows = [r for name in args.rows.split(",") for r in ROWS[name]]
    if not torch.cuda.is_available():
        rows = [r for r in rows if r[0] == "cpu"]
        print("no CUDA GPU here: CPU rows only")
    print(
        f"pipeline: {PIPELINE}; calibration {args.samples} x {args.seqlen} (austen:pride, seed 0)"
    )
    print("perplexity: austen:emma, seqlen 512, 8,192 tokens\n")
    results = []
    for device, dtype, offload in rows:
        row = f"{device},{dtype},{int(offload)}"
        cmd = [sys.executable, __file__, "--row", row, "--samples", str(args.samples)]
        cmd += ["--seqlen", str(args.seqlen)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            print(f"{row}: failed\n{out.stderr[-2000:]}")
            continue
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    if results:
        keys = list(results[0])
        print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
        for r in results:
            print("| " + " | ".join(str(r[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
