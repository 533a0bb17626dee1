"""Export a compressed model in formats other tools load: one registry, checks before writes.

Each format has a ``plan`` that checks the model and prepares everything to write (raising a
one-line ``ConfigError`` when the format cannot hold the model) and a ``write`` that only
writes; ``export_model`` runs the plan before the output is touched, then writes atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pqorder.atomic import atomic_output, check_output
from pqorder.core import LoadedModel
from pqorder.errors import ConfigError
from pqorder.export import compressed_tensors, gguf, shrink


@dataclass(frozen=True)
class ExportFormat:
    """A target format: whether its output is a directory, what it keeps, how to plan/write."""

    name: str
    directory: bool
    summary: str
    plan: Callable[[LoadedModel], Any]
    write: Callable[[LoadedModel, Path, Any], None]


FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        ExportFormat(
            "compressed-tensors",
            True,
            "HF checkpoint with int4/int8 packed weights (transformers + compressed-tensors)",
            compressed_tensors.plan_units,
            compressed_tensors.write_compressed_tensors,
        ),
        ExportFormat(
            "gguf",
            False,
            "single GGUF file, LLaMA models, Q8_0 / Q4_0 blocks from pqorder's codes (llama.cpp)",
            gguf.plan_gguf,
            gguf.write_gguf,
        ),
        ExportFormat(
            "dense",
            True,
            "plain fp32 HF checkpoint (removed blocks, dead MLP channels sliced out) or "
            "torch CNN (pruned filters cut out)",
            shrink.plan_dense,
            shrink.write_dense,
        ),
    )
}


def get_format(name: str) -> ExportFormat:
    """The format called ``name``, or a one-line error listing the known ones."""
    if name not in FORMATS:
        raise ConfigError(f"unknown export format '{name}'; choose from {', '.join(FORMATS)}")
    return FORMATS[name]


def export_path(out: Path, target: ExportFormat) -> Path:
    """Where ``compress --export`` puts the export of ``out``: beside it, ``OUT-FORMAT`` for a
    directory format, ``OUT.FORMAT`` for a single-file one."""
    sep = "-" if target.directory else "."
    return out.with_name(f"{out.name}{sep}{target.name}")


@dataclass(frozen=True)
class Exported:
    """Where an export went and what the user should know about it."""

    path: Path
    notes: list[str]


def export_model(lm: LoadedModel, fmt: str, out: Path, overwrite: bool = False) -> Exported:
    """Check that ``fmt`` can hold ``lm`` and that ``out`` may be written, then write it
    atomically (nothing is written when a check fails)."""
    target = get_format(fmt)
    out = Path(out)
    check_output(out, overwrite)
    plan = target.plan(lm)
    with atomic_output(out, target.directory) as tmp:
        target.write(lm, tmp, plan)
    return Exported(out, list(getattr(plan, "notes", [])))
