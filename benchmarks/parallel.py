"""The same small sweep with each executor: wall time, steps applied, prefix hits, start-up.

A two-block SmolLM2 (the first two decoder blocks of the built-in checkpoint, saved once to a
temporary directory so workers can load it by path), magnitude pruning at 2 ratios × RTN
(group 128) at 2 bit-widths, both orders, plus the dense run and the CER reference curve
(3, 4, 8 bits): 14 runs. Each executor starts from an empty store and an empty prefix cache.
Perplexity on ``--max-tokens`` tokens of Emma in 256-token windows.

Start-up is the time the executor took before its first job could run (workers spawned,
pqorder imported and the model loaded in each; for Ray, the local instance started too).

Run: python benchmarks/parallel.py [--executors local,process,ray] [--workers 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def tiny_checkpoint(folder: Path) -> Path:
    """The built-in SmolLM2 cut to two decoder blocks, saved as a checkpoint directory."""
    from pqorder.models.loading import load_model

    lm = load_model("smollm2-135m")
    del lm.model.model.layers[2:]
    lm.model.config.num_hidden_layers = 2
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    return folder


def measure(model: Path, kind: str, workers: int, max_tokens: int, scratch: Path) -> dict:
    """One sweep with ``kind`` in a fresh store and prefix cache; what it took."""
    from pqorder import api
    from pqorder.eval.perplexity import PerplexityProtocol
    from pqorder.prefix_cache import PrefixCache

    folder = scratch / kind
    start = time.perf_counter()
    study = api.open_study(
        str(model),
        f"parallel-{kind}",
        PerplexityProtocol("austen:emma", 256, max_tokens, 4),
        store=folder / "runs.sqlite",
        cache=PrefixCache(folder / "prefixes"),
        progress=False,
        executor=kind,
        workers=1 if kind == "local" else workers,
    )
    loaded = time.perf_counter()
    result = api.sweep(study, ["magnitude"], [0.1, 0.3], "rtn:group=128", [3, 4])
    wall = time.perf_counter() - loaded
    study.executor.close()
    runs = study.store.query(study=study.name)
    return {
        "executor": kind if kind == "local" else f"{kind} --workers {workers}",
        "wall s": wall,
        "driver load s": loaded - start,
        "start-up s": study.executor.startup_seconds,
        "runs": len(runs),
        "steps applied": study.spend.applied_steps,
        "prefix hits": study.spend.cache_hits,
        "values": [p.value_prune_then_quant for p in result.points],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executors", default="local,process,ray")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pqorder-parallel-") as tmp:
        scratch = Path(tmp)
        model = tiny_checkpoint(scratch / "model")
        rows = [
            measure(model, kind, args.workers, args.max_tokens, scratch)
            for kind in args.executors.split(",")
        ]
    columns = [k for k in rows[0] if k != "values"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in columns]
        print("| " + " | ".join(cells) + " |")
    same = all(row["values"] == rows[0]["values"] for row in rows)
    print(f"P→Q perplexities identical across executors: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
