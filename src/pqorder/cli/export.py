"""``pqorder export``: write a compressed model in a format other tools load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pqorder.cli.app import StoreOpt, app, console

FormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        "-f",
        help="compressed-tensors (HF + packed int4/int8), gguf (LLaMA Q8_0/Q4_0 file) or dense "
        "(HF / torch checkpoint, pruned structure sliced out).",
    ),
]


@app.command("export")
def export_(
    model: Annotated[str, typer.Argument(help="A pqorder output directory, alias or checkpoint.")],
    fmt: FormatOpt = ...,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output path (atomic).")] = ...,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.")] = False,
    measure: Annotated[
        bool,
        typer.Option(
            help="Load the export, print size, bits/weight, load time, tokens/s and record them "
            "in the run store."
        ),
    ] = True,
    store: StoreOpt = None,
    study: Annotated[str, typer.Option("--study", help="Study the footprint is filed under.")] = (
        "default"
    ),
) -> None:
    """Export a model: every check (format, output, what the format can hold) runs before any
    file is written."""
    from pqorder.atomic import check_output
    from pqorder.export import export_model, get_format
    from pqorder.models.loading import load_model

    get_format(fmt)
    check_output(out, overwrite)
    lm = load_model(model)
    done = export_model(lm, fmt, out, overwrite)
    for note in done.notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"exported {fmt} to {done.path}")
    if measure:
        record_footprint(done.path, fmt, model, store, study)


def record_footprint(path: Path, fmt: str, source: str, store: Path | None, study: str) -> None:
    """Measure an export in its consumer, print one line, and file it in the run store as an
    ``export`` analysis (with its source and path), so footprints sit beside the runs."""
    from pqorder.export.footprint import measure
    from pqorder.store import RunStore

    f = measure(path, fmt)
    speed = "" if f.tokens_per_second is None else f", {f.tokens_per_second:.0f} tokens/s (CPU)"
    console.print(
        f"{f.disk_bytes / 2**20:.2f} MiB, {f.parameters:,} parameters, "
        f"{f.bits_per_weight:.2f} bits/weight, loads in {f.load_seconds:.1f} s{speed}"
    )
    payload = {**f.to_dict(), "source": source, "path": str(path)}
    RunStore(store).put_analysis(study, "export", payload)
