"""What an exported model costs: size on disk, bits per weight, parameters, load time, tokens/s.

Each number is measured on the exported artifact as its consumer loads it (transformers, with
compressed-tensors or its GGUF loader), so the table says what a deployment gets, not what
pqorder assumes. Bits per weight divide every byte of the weights file (scales, embeddings and
norms included) by the parameter count.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from pqorder.export.shrink_cnn import PROGRAM_FILE

QUANT_PARAMS = ("_scale", "_zero_point", "_shape")


@dataclass(frozen=True)
class Footprint:
    """One exported model's measured cost."""

    format: str
    disk_bytes: int
    parameters: int
    bits_per_weight: float
    load_seconds: float
    tokens_per_second: float | None  # None for an image model (no tokens)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def disk_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def load_exported(path: Path, fmt: str) -> nn.Module:
    """The exported model as its consumer loads it (CPU, eval mode): a dense CNN through
    ``torch.export``, a causal LM through transformers."""
    from transformers import AutoModelForCausalLM

    path = Path(path)
    if (path / PROGRAM_FILE).exists():
        return torch.export.load(str(path / PROGRAM_FILE)).module()
    if fmt == "gguf":
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    else:
        model = AutoModelForCausalLM.from_pretrained(path)
    return model.eval()


@torch.no_grad()
def tokens_per_second(model: nn.Module, seqlen: int = 128, repeats: int = 3) -> float:
    """CPU throughput of a full forward pass over one ``seqlen``-token sequence (best of
    ``repeats``, after one warm-up pass that also decompresses lazily packed weights)."""
    ids = torch.randint(0, model.config.vocab_size, (1, seqlen), generator=torch.Generator())
    model(ids)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        model(ids)
        best = min(best, time.perf_counter() - start)
    return seqlen / best


def measure(path: Path, fmt: str, seqlen: int = 128) -> Footprint:
    """Load the exported model, time it, and count its parameters and bytes."""
    start = time.perf_counter()
    model = load_exported(path, fmt)
    load = time.perf_counter() - start
    is_lm = hasattr(model, "config")
    speed = tokens_per_second(model, seqlen) if is_lm else None  # warm-up unpacks lazy weights
    size = disk_bytes(path if is_lm else Path(path) / PROGRAM_FILE)  # what plain torch loads
    params = sum(
        p.numel() for n, p in model.named_parameters() if not n.endswith(QUANT_PARAMS)
    )  # the model's own weights; packed scales are counted in the bytes, not as weights
    return Footprint(fmt, size, params, 8 * size / params, load, speed)
