"""Write a Hugging Face checkpoint directory from tensors pqorder chose (not ``save_pretrained``).

Exporters replace some weights (packed codes, sliced matrices), so they hand the exact tensor
dict and, optionally, a ``quantization_config`` to put into ``config.json``.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor, nn

WEIGHTS_FILE = "model.safetensors"


def dense_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict as contiguous copies, a tied output head left out (the config's
    ``tie_word_embeddings`` restores it on load)."""
    tensors = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and out.weight is emb.weight:
        head = next(name for name, m in model.named_modules() if m is out)
        tensors.pop(f"{head}.weight")
    return tensors


def write_checkpoint(
    folder: Path,
    model: nn.Module,
    tokenizer: object | None,
    tensors: dict[str, Tensor],
    config_updates: dict[str, object] | None = None,
) -> None:
    """config.json (with ``config_updates`` merged in), generation config, tokenizer, weights."""
    model.config.save_pretrained(folder)
    if config_updates:
        path = folder / "config.json"
        config = json.loads(path.read_text())
        config.update(config_updates)
        path.write_text(json.dumps(config, indent=2, sort_keys=True))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    save_file(tensors, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
