"""Prefix-cache entries and a study's dense reference on the full SmolLM2: old against new.

Entries: for each pipeline the model is compressed once (calibration: 8 × 256 tokens of Pride
and Prejudice, seed 0), then saved and restored in the old entry format (format 2: every tensor
as the model holds it, fp32, plus the state file) and in the compact one (format 3: codes, kept
values, raw tensors only for what changed). Restoring the compact entry is checked bit for bit.
Memory: a child process per mode loads the model, touches every weight (transformers maps the
file, so weights become resident only when read), resets its peak RSS (``/proc/self/clear_refs``)
and runs a small study (three orders over two steps, 1,024 tokens of Emma, a prefix cache)
with the dense reference held in memory (the old snapshot) or read back from the model files.
Run: python benchmarks/prefix_cache.py (a few minutes on 2 cores; timings depend on the load).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.dense import DenseReference, same_bits
from pqorder.engine import apply_step
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline
from pqorder.prefix_cache import PrefixCache
from pqorder.snapshot import load_weights, model_weights

MODEL = "smollm2-135m"
PIPELINES = (
    "rtn:bits=4,group=128",
    "sparsegpt:ratio=0.5",
    "sparsegpt:ratio=0.5 > gptq:bits=4,group=128",
    "sleb:blocks=4,samples=2",
    "rotate",
)
CALIBRATION = CalibrationSpec("austen:pride", n_samples=8, seqlen=256, seed=0)
STUDY_ORDERS = ("magnitude:ratio=0.5", "rtn:bits=4,group=128", "magnitude:ratio=0.5 > rtn:bits=4")


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir())


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def entry_row(lm: LoadedModel, dense: DenseReference, text: str, tokens: Tensor) -> str:
    """One table row: the pipeline's entry in the old and the new format."""
    dense.restore(lm)
    for step in parse_pipeline(text).steps:
        apply_step(lm, step, tokens, progress=False)
    held, state = model_weights(lm), copy.deepcopy(lm.state)
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()

        def save_old() -> None:
            save_file(model_weights(lm), str(old / "model.safetensors"))
            lm.state.save(old / "state.safetensors")

        old_save = _timed(save_old)
        dense.restore(lm)
        old_load = _timed(
            lambda: load_weights(lm, state, load_file(str(old / "model.safetensors")))
        )
        cache = PrefixCache(Path(tmp) / "new", max_gb=100)
        new_save = _timed(lambda: cache.save("k", lm, [], dense))
        dense.restore(lm)
        new_load = _timed(lambda: cache.load("k", lm, dense))
        now = lm.model.state_dict()
        exact = now.keys() == held.keys() and all(same_bits(now[k], held[k]) for k in held)
        old_mb, new_mb = _size(old) / 2**20, _size(cache.root / "k") / 2**20
    return (
        f"| {text} | {old_mb:.1f} | {new_mb:.2f} | {old_mb / new_mb:.1f} | {old_save:.2f} | "
        f"{new_save:.2f} | {old_load:.2f} | {new_load:.2f} | {'yes' if exact else 'NO'} |"
    )


def _status() -> dict[str, float]:
    """VmRSS and VmHWM (peak since the last reset) of this process, in MiB."""
    lines = Path("/proc/self/status").read_text().splitlines()
    return {
        line.split(":")[0]: int(line.split()[1]) / 1024
        for line in lines
        if line.startswith(("VmRSS", "VmHWM"))
    }


def study_memory(from_files: bool) -> dict[str, float]:
    """Run in a child process: the peak RSS of a small study above the loaded model."""
    from pqorder.eval.perplexity import PerplexityProtocol
    from pqorder.study import Study

    lm = load_model(MODEL)
    if not from_files:
        lm.source = None  # no files: the study holds its dense model in memory
    for tensor in lm.model.state_dict().values():
        tensor.sum()  # make the whole model resident (transformers maps the weight file)
    loaded = _status()["VmRSS"]
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS counts from here
    protocol = PerplexityProtocol("austen:emma", seqlen=256, max_tokens=1024, batch_size=4)
    with tempfile.TemporaryDirectory() as tmp:
        study = Study(lm, protocol, CALIBRATION, cache=PrefixCache(Path(tmp), max_gb=100))
        for text in STUDY_ORDERS:
            study.evaluate(parse_pipeline(text).steps)
        study.reset()
        status = _status()
    return {
        "loaded_mb": loaded,
        "peak_mb": status["VmHWM"],
        "after_mb": status["VmRSS"],
        "held_in_memory": len(study._dense.in_memory),
        "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", choices=["files", "memory"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-entries", action="store_true", help="only the memory rows")
    args = parser.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.child:
        print(json.dumps(study_memory(args.child == "files")))
        return
    if not args.skip_entries:
        print(f"Prefix-cache entries of {MODEL} (MiB, seconds; old = format 2, new = format 3)")
        print(
            "| pipeline | old MiB | new MiB | smaller | old save | new save | old restore "
            "| new restore | bit-identical |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        lm = load_model(MODEL)
        tokens = sample_calibration(CALIBRATION, lm.tokenizer)
        dense = DenseReference(lm)
        for text in PIPELINES:
            print(entry_row(lm, dense, text, tokens), flush=True)
    print(f"\nStudy on {MODEL}: RSS in MiB (peak counted from after the model was loaded)")
    print("| dense reference | model resident | peak during study | after | tensors in memory |")
    print("|---|---|---|---|---|")
    for mode in ("memory", "files"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", mode], capture_output=True, text=True, check=True
        ).stdout
        m = json.loads(out.strip().splitlines()[-1])
        print(
            f"| {mode} | {m['loaded_mb']:.0f} | {m['peak_mb']:.0f} | {m['after_mb']:.0f} | "
            f"{m['held_in_memory']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
