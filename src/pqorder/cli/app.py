"""The Typer app, options shared by commands, and the entry point."""

from __future__ import annotations

import functools
import inspect
import shutil
import sys
import typing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pqorder.errors import PqorderError

app = typer.Typer(
    help="Joint model compression where the order of methods is measured and optimized.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
# Wide tables stay readable when piped (rich falls back to 80 columns without a terminal).
console = Console(width=shutil.get_terminal_size((150, 40)).columns)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="Built-in alias (smollm2-135m, minilm, fmnist-cnn, fmnist-vit, digits-cnn; opt-in "
        "gemma3-270m), resnet18 / deit-base (torchvision / timm + network), directory or hub id.",
    ),
]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        help="Evaluation data. LMs: austen:<novel>, pydoc, file:PATH (default austen:emma); "
        "vision: fashion-mnist[:test], digits[:test] (default: the model's own test split); "
        "encoders: wordnet:noun.",
    ),
]
MaxSamplesOpt = Annotated[
    int,
    typer.Option(help="Vision: first N test images (0 = all); encoders: retrieval candidates."),
]
TaskOpt = Annotated[
    str, typer.Option(help="Encoders: 'retrieval top-1', 'fidelity' or 'similarity'.")
]
ProtocolOpt = Annotated[
    str,
    typer.Option(
        "--protocol",
        help="Causal LMs: 'perplexity' (default), 'lm-eval' (zero-shot tasks, see --tasks) or "
        "'paper' (WikiText-2 test at seqlen 2048, C4 calibration 128 x 2048 seed 0; network).",
    ),
]
TasksOpt = Annotated[
    str,
    typer.Option(
        help="lm-eval tasks, comma-separated (default: the offline austen_lastword, "
        "wordnet_definitions)."
    ),
]
LimitOpt = Annotated[int | None, typer.Option(help="lm-eval: documents per task (default all).")]
SeqlenOpt = Annotated[int, typer.Option(help="Perplexity window length (tokens).")]
MaxTokensOpt = Annotated[int, typer.Option(help="Evaluate on at most this many tokens (0 = all).")]
BatchOpt = Annotated[int, typer.Option(help="Windows per forward pass.")]
CalibOpt = Annotated[
    str,
    typer.Option(
        "--calib",
        help="Calibration source: text (default austen:pride), or an image dataset's training "
        "split for vision models (default: the model's own; seqlen is then unused).",
    ),
]
CalibSamplesOpt = Annotated[int, typer.Option(help="Calibration samples.")]
CalibSeqlenOpt = Annotated[int, typer.Option(help="Tokens per calibration sample.")]
SeedOpt = Annotated[int, typer.Option(help="Calibration sampling seed.")]
SequentialOpt = Annotated[
    bool, typer.Option(help="Compress sub-layer groups in sequence within each block.")
]
StoreOpt = Annotated[
    Path | None, typer.Option("--store", help="Run store (SQLite); default in the cache dir.")
]
StudyOpt = Annotated[str, typer.Option("--study", help="Study name runs are filed under.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Do not reuse cached prefixes.")]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device", help="Where the work runs: auto (cuda, else mps, else cpu), cpu, cuda[:N], mps."
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Model precision: auto (the checkpoint's own on a GPU, float32 on CPU), float32, "
        "bfloat16, float16. Statistics and solvers stay in float32/float64.",
    ),
]
OffloadOpt = Annotated[
    bool,
    typer.Option(
        "--offload/--no-offload",
        help="Keep the blocks in host memory and move one at a time to the device.",
    ),
]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        "--executor",
        help="Where jobs run: local (in this process, one at a time), process (a local process "
        "pool) or ray (pip install 'pqorder[ray]'). Default: process with --workers > 1.",
    ),
]
WorkersOpt = Annotated[int, typer.Option("--workers", help="Worker processes or Ray actors.")]
RayAddressOpt = Annotated[
    str,
    typer.Option(
        "--ray-address", help="An existing Ray cluster (host:port or auto); default: local Ray."
    ),
]
PIPELINE_HELP = "Steps like 'rtn:bits=4,group=128 > magnitude:ratio=0.3', or a .yaml recipe."


@app.callback()
def _options(
    threads: Annotated[
        int, typer.Option(help="CPU threads for torch (0 = torch's default).", min=0)
    ] = 0,
) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


def main() -> None:
    """Entry point: PqorderError becomes one line on stderr and exit code 2."""
    try:
        app()
    except PqorderError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


# Option groups shared by many commands: (name, annotated type, default) per option.
_GROUPS = {
    "protocol": [
        ("data", DataOpt, ""),
        ("seqlen", SeqlenOpt, 512),
        ("max_tokens", MaxTokensOpt, 8192),
        ("batch_size", BatchOpt, 4),
        ("max_samples", MaxSamplesOpt, 0),
        ("task", TaskOpt, "retrieval top-1"),
        ("eval_protocol", ProtocolOpt, "perplexity"),
        ("tasks", TasksOpt, ""),
        ("limit", LimitOpt, None),
    ],
    "calibration": [
        ("calib", CalibOpt, ""),
        ("calib_samples", CalibSamplesOpt, 128),
        ("calib_seqlen", CalibSeqlenOpt, 512),
        ("seed", SeedOpt, 0),
    ],
    "hardware": [
        ("device", DeviceOpt, "auto"),
        ("dtype", DtypeOpt, "auto"),
        ("offload", OffloadOpt, False),
    ],
    "study": [
        ("model", ModelOpt, "smollm2-135m"),
        ("study", StudyOpt, "default"),
        ("store", StoreOpt, None),
        ("no_cache", NoCacheOpt, False),
        ("executor", ExecutorOpt, ""),
        ("workers", WorkersOpt, 1),
        ("ray_address", RayAddressOpt, ""),
    ],
}


def _open_study(
    model, name, protocol, calibration, store, no_cache, placement, steps=(), **executor
):
    from pqorder import api

    return api.open_study(
        model,
        name,
        protocol,
        calibration,
        store,
        cache=not no_cache,
        placement=placement,
        steps=steps,
        **executor,
    )


def _resolve(annotation: object, fn: typing.Callable) -> object:
    """A string annotation (PEP 563) evaluated in the command's module."""
    return eval(annotation, fn.__globals__) if isinstance(annotation, str) else annotation


def with_options(*groups: str):
    """Add an option group's flags to a command and hand it the built value instead.

    ``@with_options("protocol", "calibration")`` gives the command ``--data --seqlen
    --max-tokens --batch-size --calib --calib-samples --calib-seqlen --seed`` and calls it
    with ``protocol=PerplexityProtocol(...)`` and ``calibration=CalibrationSpec(...)``,
    validated before any work starts. The "hardware" group adds ``--device --dtype
    --offload`` and passes ``placement`` (checked before any model is loaded). The "study"
    group (after those) adds ``--model --study --store --no-cache --executor --workers
    --ray-address`` and passes ``study``, a
    function that opens the Study: ``study(steps)`` refuses, before loading the model, a study
    of those methods whose memory plan does not fit this machine.
    """

    def decorate(fn):
        own = [
            p.replace(annotation=_resolve(p.annotation, fn))
            for p in inspect.signature(fn).parameters.values()
            if p.name not in groups  # the group's value replaces these; never resolved
        ]
        extra = [
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
            )
            for group in groups
            for name, annotation, default in _GROUPS[group]
        ]

        @functools.wraps(fn)
        def command(**kwargs):
            from pqorder.eval.select import calibration_for, protocol_for

            raw = {name: kwargs.pop(name) for g in groups for name, _a, _d in _GROUPS[g]}
            model = kwargs.get("model", raw.get("model"))
            if "protocol" in groups:
                kwargs["protocol"] = protocol_for(
                    model,
                    raw["data"],
                    raw["max_samples"],
                    raw["task"],
                    raw["seqlen"],
                    raw["max_tokens"] or None,
                    raw["batch_size"],
                    raw["eval_protocol"],
                    raw["tasks"],
                    raw["limit"],
                )
            if "calibration" in groups:
                kwargs["calibration"] = calibration_for(
                    model,
                    raw["calib"],
                    raw["calib_samples"],
                    raw["calib_seqlen"],
                    raw["seed"],
                    raw.get("data", ""),
                    raw.get("eval_protocol", "perplexity"),
                )
            if "hardware" in groups:
                from pqorder.hardware import resolve_hardware

                kwargs["placement"] = resolve_hardware(raw["device"], raw["dtype"], raw["offload"])
            if "study" in groups:  # opened on demand, after the command checked its own input
                kwargs["study"] = functools.partial(
                    _open_study,
                    raw["model"],
                    raw["study"],
                    kwargs["protocol"],
                    kwargs["calibration"],
                    raw["store"],
                    raw["no_cache"],
                    kwargs.pop("placement"),
                    executor=raw["executor"] or None,
                    workers=raw["workers"],
                    ray_address=raw["ray_address"] or None,
                )
            return fn(**kwargs)

        params = own + extra
        command.__signature__ = inspect.Signature(params)
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
