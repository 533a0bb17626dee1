"""Where a model keeps its blocks and compressible units (declarative, no subclass per model)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pqorder.errors import ConfigError

# Attribute paths of the repeated block list, per family: LLaMA/Mistral/Qwen, OPT, GPT-2,
# GPT-NeoX, BERT-style encoders.
BLOCK_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "encoder.layer",
    "bert.encoder.layer",
)


def _resolve(model: nn.Module, path: str) -> nn.Module | None:
    obj: object = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.ModuleList) else None


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's repeated blocks and their attribute path."""
    for path in BLOCK_PATHS:
        blocks = _resolve(model, path)
        if blocks is not None:
            return path, blocks
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__}; "
        f"supported layouts: {', '.join(BLOCK_PATHS)}"
    )


def _is_unit(module: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D is a Linear with a transposed weight.
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def compressible_units(model: nn.Module) -> dict[str, nn.Module]:
    """Linear layers inside the blocks, by full module name (embeddings and head excluded)."""
    path, blocks = decoder_blocks(model)
    units = {
        f"{path}.{name}": module
        for name, module in blocks.named_modules()
        if name and _is_unit(module)
    }
    if not units:
        raise ConfigError(f"{type(model).__name__} has no Linear layers inside its blocks")
    return units


def unit_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a unit (Linear stores (out, in), Conv1D (in, out))."""
    rows, cols = module.weight.shape
    return (rows, cols) if isinstance(module, nn.Linear) else (cols, rows)


def in_features(module: nn.Module) -> int:
    return unit_shape(module)[1]


def get_weight(module: nn.Module) -> Tensor:
    """A float32 copy of the unit's weight as (out_features, in_features)."""
    w = module.weight.detach()
    if not isinstance(module, nn.Linear):
        w = w.t()
    return w.to(torch.float32, copy=True)


@torch.no_grad()
def set_weight(module: nn.Module, w: Tensor) -> None:
    """Write an (out, in) weight back in the module's own layout and dtype."""
    if not isinstance(module, nn.Linear):
        w = w.t()
    module.weight.copy_(w.to(module.weight.dtype))
