"""Write a compressed model atomically: a temp directory renamed into place when complete."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import Tensor, nn

from pqorder.atomic import atomic_output, check_output
from pqorder.core import LoadedModel
from pqorder.errors import ConfigError
from pqorder.export.checkpoint import dense_tensors, write_checkpoint
from pqorder.models.loading import VISION_FILE
from pqorder.state import STATE_FILE

RECORD_FILE = "pqorder.json"


def _save_model(lm: LoadedModel, folder: Path) -> None:
    """HF checkpoint and tokenizer; a vision model as its state dict and architecture alias."""
    if lm.kind == "vision":
        if getattr(lm.model, "arch", None) is None:
            raise ConfigError("only vision models loaded by alias can be saved and reloaded")
        save_file(dict(lm.model.state_dict()), str(folder / "model.safetensors"))
        (folder / VISION_FILE).write_text(json.dumps({"arch": lm.model.arch}))
        return
    if lm.state.model.factoring is not None:  # transformers refuses a basis shared by layers
        write_checkpoint(folder, lm.model, lm.tokenizer, factored_tensors(lm.model))
        return
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)


def factored_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's tensors with each shared basis once, under its first block's name (loading
    rebuilds the sharing from the composition state)."""
    own = {name for name, _ in model.named_parameters()}
    return {
        k: v
        for k, v in dense_tensors(model).items()
        if ".basis." not in k or k in own  # named_parameters lists a shared tensor once
    }


def save_compressed(lm: LoadedModel, out: Path, record: dict[str, Any], overwrite: bool) -> Path:
    """HF checkpoint + tokenizer + composition state + run record, all or nothing."""
    out = Path(out)
    check_output(out, overwrite)
    with atomic_output(out, directory=True) as tmp:
        _save_model(lm, tmp)
        lm.state.save(tmp / STATE_FILE)
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2))
    return out
