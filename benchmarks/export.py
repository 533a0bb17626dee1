"""Footprint of exported SmolLM2 models: size on disk, bits/weight, parameters, load time, tokens/s.

For each setting (dense, int4, 50% sparse + int4, 25% MLP channels removed + int8, and a
third of the attention heads removed too) the model
is compressed, exported to every format that accepts it (a refusal is printed as such), loaded
back in its consumer library and timed: CPU tokens/s of one 128-token forward pass (best of
3), and its ratio to that of the dense setting's dense (fp32) export. Calibration: 32 × 256
tokens of Pride and Prejudice, seed 0. Run: python benchmarks/export.py (full model, not timed
here; ``--quick``: magnitude pruning and the first 2 blocks, about 2 minutes on 2 busy cores).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import ConfigError
from pqorder.export import FORMATS, export_model
from pqorder.export.footprint import Footprint, measure
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline, run_pipeline
from pqorder.snapshot import restore_snapshot, take_snapshot

SETTINGS = {
    "dense": "",
    "int4 g64": "rtn:bits=4,group=64,sym=true",
    "50% + int4": "sparsegpt:ratio=0.5 > gptq:bits=4,group=64,sym=true",
    "25% channels + int8": "structured:target=channels,ratio=0.25 > rtn:bits=8,sym=true",
    "1/3 heads + 25% channels + int8": (
        "structured:target=heads,ratio=0.34 > structured:target=channels,ratio=0.25 "
        "> rtn:bits=8,sym=true"
    ),
}
QUICK = {**SETTINGS, "50% + int4": "magnitude:ratio=0.5 > rtn:bits=4,group=64,sym=true"}
FILE_NAMES = {"compressed-tensors": "ct", "gguf": "m.gguf", "dense": "dense"}


def _row(setting: str, f: Footprint | str, dense_speed: float) -> str:
    if isinstance(f, str):
        return f"| {setting} | refused: {f} |||||||"
    speed = f.tokens_per_second or 0.0
    return (
        f"| {setting} | {f.format} | {f.disk_bytes / 2**20:.1f} | {f.bits_per_weight:.2f} | "
        f"{f.parameters / 1e6:.1f} | {f.load_seconds:.1f} | {speed:.0f} | "
        f"{speed / dense_speed:.2f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 blocks, magnitude + RTN")
    parser.add_argument("--out", type=Path, help="keep the exports here (default: a temp dir)")
    parser.add_argument(
        "--only", action="append", choices=list(SETTINGS), help="these rows (and dense, the base)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")  # loaders' progress bars
    lm = load_model("smollm2-135m")
    if args.quick:
        del lm.model.model.layers[2:]
        lm.model.config.num_hidden_layers = 2
    dense = take_snapshot(lm)
    calibration = CalibrationSpec("austen:pride", 32, 256, 0)
    root = args.out or Path(tempfile.mkdtemp(prefix="pqorder-export-"))
    found: list[tuple[str, Footprint | str]] = []
    table = QUICK if args.quick else SETTINGS
    chosen = {k: v for k, v in table.items() if not args.only or k == "dense" or k in args.only}
    for i, (setting, pipeline) in enumerate(chosen.items()):
        restore_snapshot(lm, dense)
        if pipeline:
            run_pipeline(lm, parse_pipeline(pipeline), calibration, progress=False)
        for fmt in FORMATS:
            out = root / f"{i}-{FILE_NAMES[fmt]}"
            try:
                export_model(lm, fmt, out, overwrite=True)
            except ConfigError as exc:
                found.append((setting, f"{fmt}: {exc}"))
                continue
            found.append((setting, measure(out, fmt)))
            print(found[-1], flush=True)
    base = next(f for s, f in found if s == "dense" and getattr(f, "format", "") == "dense")
    print("\n| setting | format | MiB | bits/weight | M params | load s | tokens/s | vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(_row(s, f, base.tokens_per_second) for s, f in found))
    print(f"\nexports in {root}")


if __name__ == "__main__":
    main()
