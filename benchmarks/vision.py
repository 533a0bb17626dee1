"""Vision benchmark: training and evaluation of the built-in Fashion-MNIST models, and the
time and top-1 of every method on the Fashion-MNIST CNN.

Protocol: fmnist-cnn (ResNet-style, 77.8 k parameters) and fmnist-vit (patch 7, 4 blocks);
training as recorded when each was cached (seed 0, AdamW + one-cycle, no augmentation);
top-1 on the official 10,000-image test split. Compression of all 8 Conv2d units inside the
CNN's blocks (stem and classifier stay dense), calibration 128 training images, seed 0, on
the threads torch is given (--threads, default 2). Each method starts from the dense model.
Run: python benchmarks/vision.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

DEFAULT_STEPS = [
    "magnitude:ratio=0.5",
    "wanda:ratio=0.5",
    "sparsegpt:ratio=0.5",
    "filters:ratio=0.25",
    "filters:ratio=0.25,bn=true",
    "rtn:bits=4",
    "rtn:bits=3",
    "gptq:bits=4",
    "gptq:bits=3",
]


def training_rows() -> list[dict]:
    """The cached training record of each built-in model (training it now if missing)."""
    from pqorder.models.zoo import load_vision

    rows = []
    for alias in ("fmnist-cnn", "fmnist-vit"):
        _model, record = load_vision(alias)
        rows.append({"model": alias, **record})
    return rows


def method_rows(steps: list[str], samples: int) -> tuple[float, list[dict]]:
    """Dense top-1, then (step, seconds, sparsity, top-1) for each step from dense."""
    from pqorder.data.calibration import CalibrationSpec
    from pqorder.eval.accuracy import AccuracyProtocol
    from pqorder.models.loading import load_model
    from pqorder.pipeline import parse_pipeline, run_pipeline
    from pqorder.snapshot import restore_snapshot, take_snapshot

    lm = load_model("fmnist-cnn")
    protocol = AccuracyProtocol("fashion-mnist:test")
    protocol.prepare(lm)
    dense_snapshot = take_snapshot(lm)
    start = time.perf_counter()
    dense = protocol.score(lm)
    eval_seconds = time.perf_counter() - start
    calibration = CalibrationSpec("fashion-mnist:train", samples, 512, 0)
    rows = []
    for step in steps:
        restore_snapshot(lm, dense_snapshot)
        result = run_pipeline(lm, parse_pipeline(step), calibration, progress=False)
        record = result.records[0]
        rows.append(
            {
                "step": step,
                "seconds": result.seconds,
                "units": record.units,
                "sparsity": record.sparsity,
                "top1": protocol.score(lm),
            }
        )
    return dense, [{"step": "dense", "seconds": eval_seconds, "top1": dense}, *rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="*", default=DEFAULT_STEPS)
    parser.add_argument("--samples", type=int, default=128, help="calibration images")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    training = training_rows()
    print(f"{'model':12s} {'params':>8s} {'epochs':>6s} {'train s':>8s} {'eval s':>7s} top-1")
    for r in training:
        print(
            f"{r['model']:12s} {r['params']:8d} {r['epochs']:6d} {r['train_seconds']:8.1f} "
            f"{r['eval_seconds']:7.2f} {r['test_top1']:.4f}"
        )
    _dense, rows = method_rows(args.steps, args.samples)
    print(f"\nfmnist-cnn, {args.samples} calibration images, {args.threads} threads")
    print(f"{'step':28s} {'seconds':>8s} {'sparsity':>8s} top-1")
    for r in rows:
        sparsity = f"{r['sparsity']:.3f}" if "sparsity" in r else "-"
        print(f"{r['step']:28s} {r['seconds']:8.2f} {sparsity:>8s} {r['top1']:.4f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"training": training, "methods": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
