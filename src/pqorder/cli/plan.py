"""``pqorder plan``: the memory a run will need, from the model's config, before any work."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from pqorder.cli.app import (
    PIPELINE_HELP,
    BatchOpt,
    CalibSamplesOpt,
    CalibSeqlenOpt,
    DeviceOpt,
    DtypeOpt,
    ModelOpt,
    OffloadOpt,
    SeqlenOpt,
    app,
    console,
)

FreeOpt = Annotated[
    float | None,
    typer.Option(
        "--free",
        help="Plan against this many GiB free on the device instead of measuring it (the "
        "device then need not exist here: plan for a GPU you do not have).",
        min=0,
    ),
]


def _rows(plan) -> list[tuple[str, int, str]]:
    from pqorder.core import Need
    from pqorder.plan import CALIB_BATCH

    stats = "one Hessian per input group of a block (float64 sum + float32)"
    if plan.need < Need.STATISTICS:
        stats += ": not needed by this pipeline"
    return [
        ("weights", plan.weights, f"{plan.params:,} parameters"),
        ("one block", plan.block, "the largest block"),
        ("outside blocks", plan.outside, "embeddings, head, final norm"),
        ("activations", plan.activations, "block inputs + outputs for the calibration set"),
        ("per batch", plan.batch_transient, f"one block's forward on {CALIB_BATCH} samples"),
        ("statistics", plan.statistics, stats),
        ("OBS solver", plan.solver, "largest unit: W in float32 + (H + λI)⁻¹ factorization"),
        ("evaluation", plan.evaluation, "one evaluation batch (causal LMs: logits in float32)"),
        (
            "prefix-cache entry",
            plan.prefix_entry,
            "on disk, at most (rotated weights); codes are less",
        ),
    ]


@app.command()
def plan(
    model: ModelOpt = "smollm2-135m",
    pipeline: Annotated[str, typer.Option("--pipeline", "-p", help=PIPELINE_HELP)] = ...,
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    offload: OffloadOpt = False,
    calib_samples: CalibSamplesOpt = 128,
    calib_seqlen: CalibSeqlenOpt = 512,
    seqlen: SeqlenOpt = 512,
    batch_size: BatchOpt = 4,
    evaluate: Annotated[
        bool, typer.Option("--eval/--no-eval", help="Plan for an evaluation after compressing.")
    ] = True,
    free: FreeOpt = None,
) -> None:
    """Print the memory plan of compressing MODEL with PIPELINE and evaluating it, computed
    from the model's config alone; exit non-zero when it does not fit the device."""
    from pqorder.hardware import resolve_precision
    from pqorder.models.loading import saved_output
    from pqorder.pipeline import resolve_pipeline
    from pqorder.plan import GIB, check_fits, config_dtype, gib, plan_memory

    steps = resolve_pipeline(pipeline).steps
    own = config_dtype(model)
    where, precision = resolve_precision(device, dtype, own, free is None, saved_output(model))
    memory = plan_memory(
        model,
        steps,
        where,
        precision,
        offload,
        calib_samples,
        calib_seqlen,
        seqlen,
        batch_size,
        evaluate,
    )
    table = Table("item", "GiB", "what")
    for label, size, note in _rows(memory):
        table.add_row(label, gib(size), note)
    console.print(
        f"{model} on {where} in {str(precision).removeprefix('torch.')}, "
        f"offload {'on' if offload else 'off'}, calibration {calib_samples} x {calib_seqlen}"
    )
    console.print(table)
    parts = " + ".join(f"{label} {gib(size)}" for label, size in memory.device_parts if size)
    console.print(f"peak on {where}: {gib(memory.device_peak)} GiB ({parts})")
    host = " + ".join(f"{label} {gib(size)}" for label, size in memory.host_parts if size)
    console.print(f"peak in host RAM: {gib(memory.host_peak)} GiB ({host})")
    check_fits(memory, None if free is None else int(free * GIB))
    console.print("fits")
