"""A model's compressible units and how every method sees them (layouts: ``architecture``).

Units are Linear layers (and GPT-2's Conv1D) and Conv2d layers inside the blocks. Every
method sees a unit's weight as an (out, in) matrix: a Conv2d weight (out, C, kh, kw) is
viewed as (out, C·kh·kw), the column order of ``torch.nn.functional.unfold`` (im2col), so a
convolution's calibration inputs are its unfolded patches and H = 2/n·XᵀX has the same
meaning as for a Linear layer. Grouped and depthwise convolutions are skipped (each filter
sees only its group's channels, so one (out, in) matrix and one Hessian do not describe it).
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from pqorder.errors import ConfigError
from pqorder.factors import FactoredLinear
from pqorder.models.architecture import architecture, resolve_blocks


def decoder_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's repeated blocks and their attribute path (from its ``Architecture``)."""
    path = architecture(model).blocks
    return path, resolve_blocks(model, path)


def _is_unit(module: nn.Module) -> bool:
    # transformers' GPT-2 Conv1D is a Linear with a transposed weight.
    if isinstance(module, nn.Conv2d):
        return module.groups == 1
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def skipped_units(model: nn.Module) -> dict[str, str]:
    """Layers inside the blocks that are left dense, with the reason."""
    path, blocks = decoder_blocks(model)
    return {
        f"{path}.{name}": f"grouped/depthwise convolution (groups={m.groups}) is not compressed"
        for name, m in blocks.named_modules()
        if isinstance(m, nn.Conv2d) and m.groups > 1
    }


def _in_adapter(name: str) -> bool:
    """Whether a module is part of an unmerged LoRA adapter (PEFT's ``lora_A``, ``lora_B``)."""
    return any(part.startswith("lora_") for part in name.split("."))


def _unit_name(name: str) -> str:
    """A unit wrapped by an unmerged LoRA adapter keeps its name (PEFT calls it ``base_layer``)."""
    return name.removesuffix(".base_layer")


def compressible_units(model: nn.Module) -> dict[str, nn.Module]:
    """Linear and Conv2d layers inside the blocks, by full module name (embeddings, stem and
    head excluded)."""
    path, blocks = decoder_blocks(model)
    units = {
        f"{path}.{_unit_name(name)}": module
        for name, module in blocks.named_modules()
        if name and _is_unit(module) and not _in_adapter(name)
    }
    if not units:
        raise ConfigError(
            f"{type(model).__name__} has no compressible layers (Linear or non-grouped Conv2d) "
            "inside its blocks"
        )
    return units


def unit_shape(module: nn.Module) -> tuple[int, int]:
    """(out, in) of a unit (Linear stores (out, in), Conv1D (in, out), Conv2d (out, C, kh, kw))."""
    if isinstance(module, nn.Conv2d):
        w = module.weight
        return w.shape[0], w[0].numel()
    rows, cols = module.weight.shape
    return (rows, cols) if isinstance(module, nn.Linear) else (cols, rows)


def in_features(module: nn.Module) -> int:
    """Input width of a unit, or of a factored projection (``pqorder.factors``)."""
    if isinstance(module, FactoredLinear):
        return module.in_features
    return unit_shape(module)[1]


def get_weight(module: nn.Module) -> Tensor:
    """A float32 copy of the unit's weight as (out_features, in_features)."""
    return weight_matrix(module, module.weight.detach())


def weight_matrix(module: nn.Module, w: Tensor) -> Tensor:
    """A float32 copy of ``w``, stored in ``module``'s layout, as (out_features, in_features)."""
    if isinstance(module, nn.Conv2d):
        w = w.reshape(w.shape[0], -1)  # (out, C·kh·kw), unfold's column order
    elif not isinstance(module, nn.Linear):
        w = w.t()
    return w.to(torch.float32, copy=True)


def module_layout(module: nn.Module, w: Tensor) -> Tensor:
    """An (out, in) weight in ``module``'s own layout (the inverse of ``weight_matrix``)."""
    if isinstance(module, nn.Conv2d):
        return w.reshape(module.weight.shape)
    return w if isinstance(module, nn.Linear) else w.t()


@torch.no_grad()
def set_weight(module: nn.Module, w: Tensor) -> None:
    """Write an (out, in) weight back in the module's own layout and dtype."""
    module.weight.copy_(module_layout(module, w).to(module.weight.dtype))


def unit_inputs(module: nn.Module, x: Tensor) -> Tensor:
    """The rows X (n, in) a unit multiplies by its (out, in) weight, from its input tensor.

    Linear: every token is a row. Conv2d: every output position's input patch is a row,
    im2col'd with the layer's own kernel, stride, padding and dilation.
    """
    if isinstance(module, nn.Conv2d):
        if isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ConfigError(
                "calibration of convolutions needs numeric zero padding, got "
                f"padding={module.padding!r}, padding_mode={module.padding_mode!r}"
            )
        cols = nn.functional.unfold(
            x, module.kernel_size, module.dilation, module.padding, module.stride
        )  # (B, C·kh·kw, L)
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def input_signature(module: nn.Module) -> tuple:
    """Units that read the same tensor share a Hessian only when they see it the same way."""
    if isinstance(module, nn.Conv2d):
        return (module.kernel_size, module.stride, module.padding, module.dilation)
    return ()


def input_device(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where a model takes its inputs, and its float dtype: those of its first parameter
    outside the blocks (the blocks may sit in host memory while the model runs offloaded)."""
    path, _ = decoder_blocks(model)
    for name, p in model.named_parameters():
        if not name.startswith(f"{path}."):
            return p.device, p.dtype
    p = next(model.parameters())
    return p.device, p.dtype


def model_input(model: nn.Module, batch: Tensor) -> Tensor:
    """``batch`` on the model's input device; images also in its dtype."""
    device, dtype = input_device(model)
    return batch.to(device, dtype) if batch.is_floating_point() else batch.to(device)


def run_model(model: nn.Module, batch: Tensor) -> object:
    """One forward pass on a calibration batch: images (float) or token ids (integer)."""
    batch = model_input(model, batch)
    if batch.is_floating_point():
        return model(batch)
    if "use_cache" in inspect.signature(model.forward).parameters:
        return model(input_ids=batch, use_cache=False)
    return model(input_ids=batch)
