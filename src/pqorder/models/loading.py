"""Load a model by built-in alias, local directory, or Hugging Face id (network needed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pqorder.errors import AssetError
from pqorder.models import smollm2
from pqorder.state import STATE_FILE, CompressionState

ALIASES = {smollm2.ALIAS: smollm2.prepare_checkpoint}
CAVEATS = {smollm2.ALIAS: smollm2.CAVEAT}


@dataclass
class LoadedModel:
    """A causal LM, its tokenizer, and the constraints already established on it."""

    name: str
    model: nn.Module
    tokenizer: object
    state: CompressionState = field(default_factory=CompressionState)
    runtime: Any = field(default=None, repr=False)  # pqorder.transforms.Runtime, made on demand

    @property
    def caveat(self) -> str | None:
        return CAVEATS.get(self.name)


def _from_pretrained(source: str | Path, name: str) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.eval()
    state_file = Path(source) / STATE_FILE
    state = CompressionState.load(state_file) if state_file.exists() else CompressionState()
    lm = LoadedModel(name, model, tokenizer, state)
    if state_file.exists():
        from pqorder.transforms import sync  # the saved forward-pass transforms come back

        sync(lm)
    return lm


def load_model(spec: str) -> LoadedModel:
    """``smollm2-135m``, a directory (HF checkpoint or pqorder output), or a hub id."""
    if spec in ALIASES:
        return _from_pretrained(ALIASES[spec](), spec)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise AssetError(f"{path} is a directory without config.json, not a model checkpoint")
        return _from_pretrained(path, str(path))
    try:
        return _from_pretrained(spec, spec)
    except OSError as exc:
        raise AssetError(
            f"cannot load model '{spec}' (not a local directory; the Hugging Face hub is "
            f"unreachable or has no such model). Offline, use the built-in alias "
            f"'{smollm2.ALIAS}' or a local checkpoint directory. ({type(exc).__name__})"
        ) from exc
