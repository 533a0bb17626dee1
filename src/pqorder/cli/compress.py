"""Commands that prepare assets, list methods, compress and evaluate models."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pqorder.cli.app import (
    PIPELINE_HELP,
    ModelOpt,
    SequentialOpt,
    StoreOpt,
    StudyOpt,
    app,
    console,
    with_options,
)


@app.command()
def prepare(
    vision: Annotated[
        bool, typer.Option(help="Also train and cache fmnist-cnn and fmnist-vit (minutes).")
    ] = False,
) -> None:
    """Fetch and cache the offline assets: Austen novels, the fp32 SmolLM2 checkpoint, and
    Fashion-MNIST and WordNet (Debian packages). Built-in vision models train on first use."""
    from pqorder.data.austen import fetch_austen
    from pqorder.data.images import fashion_mnist_dir
    from pqorder.data.wordnet import wordnet_file
    from pqorder.models.smollm2 import prepare_checkpoint
    from pqorder.models.zoo import prepare_vision, trained_record

    console.print(f"austen novels : {fetch_austen()}")
    console.print(f"smollm2-135m  : {prepare_checkpoint()}")
    console.print(f"fashion-mnist : {fashion_mnist_dir()}")
    console.print(f"wordnet       : {wordnet_file('noun').parent}")
    for alias in ("fmnist-cnn", "fmnist-vit") if vision else ():
        prepare_vision(alias)
        console.print(f"{alias:14s}: {trained_record(alias)}")


@app.command()
def methods() -> None:
    """List every compression method with its parameters, defaults and granularity."""
    from pqorder.methods import REGISTRY

    table = Table("method", "family", "parameters (default)", "granularity", "what it does")
    for name, cls in sorted(REGISTRY.items()):
        params = ", ".join(
            f"{key}={field.default}" for key, field in cls.Config.model_fields.items()
        )
        table.add_row(name, cls.family, params, cls.granularities, cls.summary)
    console.print(table)


@app.command()
@with_options("protocol", "calibration", "hardware")
def compress(
    model: ModelOpt = "smollm2-135m",
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help=PIPELINE_HELP)] = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory (atomic).")] = ...,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output directory.")] = False,
    evaluate: Annotated[bool, typer.Option("--eval/--no-eval", help="Evaluate after.")] = True,
    sequential: SequentialOpt = False,
    export: Annotated[
        str | None,
        typer.Option(
            "--export",
            help="Also export the result (see 'pqorder export') to OUT-FORMAT or OUT.gguf, "
            "and record its footprint in the run store.",
        ),
    ] = None,
    store: StoreOpt = None,
    study: StudyOpt = "default",
    protocol=None,
    calibration=None,
    placement=None,
) -> None:
    """Compress a model with a pipeline and save it (HF checkpoint + constraints + record)."""
    from pqorder.artifacts import save_compressed
    from pqorder.atomic import check_output
    from pqorder.cli.export import record_footprint
    from pqorder.errors import ConfigError
    from pqorder.eval.select import calibration_for
    from pqorder.export import export_model, export_path, get_format
    from pqorder.methods.lora import LoRA, check_held_out
    from pqorder.models.loading import load_model
    from pqorder.pipeline import resolve_pipeline, run_pipeline
    from pqorder.plan import check_run

    pipe = resolve_pipeline(pipeline)
    if unmerged := [s.label() for s in pipe.steps if s.last_only() is not None]:
        raise ConfigError(
            f"compress saves plain weights; {unmerged[0]} keeps unmerged LoRA adapters "
            "(use merge=true, or keep the adapters in a Python session)"
        )
    if evaluate and any(isinstance(s, LoRA) for s in pipe.steps):
        check_held_out(pipe.steps, protocol, (calibration or calibration_for(model)).source)
    check_output(out, overwrite)
    if export is not None:
        check_output(export_path(out, get_format(export)), overwrite)
    check_run(model, pipe.steps, placement, calibration, protocol if evaluate else None)
    lm = load_model(model, placement)
    if evaluate:
        protocol.prepare(lm)  # a dataset that does not fit the model fails before compressing
    result = run_pipeline(lm, pipe, calibration, sequential=sequential)
    record = {
        "model": model,
        "pipeline": pipe.to_text(),
        "calibration": asdict(result.calibration) if result.calibration else None,
        "sequential": sequential,
        "steps": [r.to_dict() for r in result.records],
        "seconds": result.seconds,
    }
    table = Table("step", "granularity", "units", "sparsity", "bits", "seconds")
    for r in result.records:
        bits = str(r.bits or "-")
        table.add_row(
            r.label,
            r.granularity,
            str(r.units),
            f"{r.sparsity:.4f}",
            bits,
            f"{r.seconds:.1f}",
        )
    console.print(table)
    for r in result.records:
        for note in r.notes:
            console.print(f"[yellow]{r.label}:[/] {note}")
    if evaluate:
        record[protocol.name] = _evaluate(lm, protocol, progress=True)
    console.print(f"saved to {save_compressed(lm, out, record, overwrite)}")
    if export is not None:
        target = export_path(out, get_format(export))
        done = export_model(lm, export, target, overwrite)
        for note in done.notes:
            console.print(f"[yellow]note:[/] {note}")
        console.print(f"exported {export} to {done.path}")
        record_footprint(target, export, model, store, study)
    if lm.caveat:
        console.print(f"[yellow]note:[/] {lm.caveat}")


def _describe(result) -> str:
    p = result.protocol
    return f"{p.dataset}, seqlen {p.seqlen}, {result.tokens} tokens in {result.windows} windows"


def _evaluate(lm, protocol, progress: bool, echo: bool = True) -> dict:
    """Evaluate under the (prepared) protocol, print one line, return the JSON-able result."""
    from pqorder.eval import evaluation_details, protocol_dict
    from pqorder.eval.perplexity import evaluate_perplexity

    if protocol.name == "perplexity":
        result = evaluate_perplexity(lm.model, lm.tokenizer, protocol, progress=progress)
        if echo:
            console.print(f"{lm.name}: perplexity {result.perplexity:.3f}  ({_describe(result)})")
        return result.to_dict()
    value = protocol.score(lm)
    details = evaluation_details(protocol)
    if echo:
        console.print(f"{lm.name}: {protocol.name} {value:.4f}  ({protocol})")
        for task, r in details.get("tasks", {}).items():
            console.print(
                f"  {task}: {r['metric']} {r['value']:.4f} ± {1.96 * r['stderr']:.4f} "
                f"(95%, n={r['n']}, version {r['version']})"
            )
    return {protocol.name: value, "protocol": protocol_dict(protocol), **details}


@app.command("eval")
@with_options("protocol", "hardware")
def eval_(
    model: ModelOpt = "smollm2-135m",
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    protocol=None,
    placement=None,
) -> None:
    """Perplexity (LMs), top-1 accuracy (vision) or retrieval top-1 (encoders) of a model."""
    from pqorder.models.loading import load_model

    lm = load_model(model, placement)
    protocol.prepare(lm)
    result = _evaluate(lm, protocol, progress=not as_json, echo=not as_json)
    if as_json:
        typer.echo(json.dumps({"model": model, **result}, indent=2))
