"""compressed-tensors ``pack-quantized`` export of weights that lie on a pqorder grid.

Every quantized Linear is stored as its integer codes packed into int32 (``weight_packed``),
its per-group scales (``weight_scale``, model dtype) and its shape; transformers rebuilds the
weight as ``scale · q`` through the compressed-tensors library. pqorder's symmetric grid is
``scale · (code − 2^(b−1))``, so the signed code ``code − 2^(b−1)`` with the same scale gives
the very value pqorder evaluated; pruned weights are code ``2^(b−1)``, stored as signed 0, and
come back as exact zeros.

Groups: compressed-tensors needs every group inside the row (in_features divisible by the
group size), while pqorder pads a last partial group. A group size that does not divide
in_features is written as groups of gcd(group, in_features), each one repeating its parent
group's scale: the same values, more scales. Layers without a grid (lm_head, embeddings,
norms, units left dense) stay in the model dtype and are listed under ``ignore``.

Asymmetric (zero-point) grids are refused: transformers 5.x + compressed-tensors 0.20 fail to
load asymmetric pack-quantized checkpoints even when the library writes them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError
from pqorder.export.checkpoint import dense_tensors, write_checkpoint
from pqorder.export.checks import check_plain_forward, signed_codes
from pqorder.models.adapter import compressible_units


@dataclass(frozen=True)
class PackedUnit:
    """How one unit is written: compressed-tensors strategy, group size and its tensors."""

    name: str
    bits: int
    strategy: str  # "group" or "channel"
    group_size: int | None  # None for "channel"
    scale: Tensor  # (out, n_groups) in the layout compressed-tensors reads
    codes: Tensor  # (out, in) signed int8


def plan_units(lm: LoadedModel) -> list[PackedUnit]:
    """Every unit with a grid, checked and converted, before anything is written."""
    check_plain_forward(lm, "compressed-tensors")
    units = []
    for name, module in compressible_units(lm.model).items():
        grid = lm.state.get(name).grid
        if grid is None:
            continue
        if not isinstance(module, nn.Linear):
            raise ConfigError(f"{name} is a {type(module).__name__}; only Linear layers export")
        codes = signed_codes(name, module, grid, "compressed-tensors")
        inp = codes.shape[1]
        if grid.group_size >= inp:
            units.append(PackedUnit(name, grid.bits, "channel", None, grid.scale[:, :1], codes))
            continue
        group = math.gcd(grid.group_size, inp)
        scale = grid.scale.repeat_interleave(grid.group_size // group, dim=1)[:, : inp // group]
        units.append(PackedUnit(name, grid.bits, "group", group, scale, codes))
    if not units:
        raise ConfigError(
            "no unit of this model is quantized; compressed-tensors stores quantized weights "
            "(use --format dense for a pruned-only model)"
        )
    return units


def _pack(codes: Tensor, bits: int) -> Tensor:
    from compressed_tensors.compressors.pack_quantized.helpers import pack_to_int32

    return pack_to_int32(codes, bits)


def quantization_config(lm: LoadedModel, units: list[PackedUnit]) -> dict[str, object]:
    """The ``quantization_config`` block: one config group per (bits, strategy, group size),
    targeting its layers by exact name; every other leaf module with weights is ignored."""
    from compressed_tensors import __version__
    from compressed_tensors.quantization import (
        QuantizationArgs,
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
    )

    by_scheme: dict[tuple[int, str, int | None], list[str]] = defaultdict(list)
    for u in units:
        by_scheme[(u.bits, u.strategy, u.group_size)].append(u.name)
    groups = {}
    for i, ((bits, strategy, group), names) in enumerate(sorted(by_scheme.items(), key=str)):
        args = QuantizationArgs(
            num_bits=bits, type="int", symmetric=True, strategy=strategy, group_size=group
        )
        groups[f"group_{i}"] = QuantizationScheme(
            targets=names, weights=args, format="pack-quantized"
        )
    quantized = {u.name for u in units}
    ignore = [
        name
        for name, m in lm.model.named_modules()
        if name not in quantized and any(True for _ in m.parameters(recurse=False))
    ]
    config = QuantizationConfig(
        config_groups=groups,
        format="pack-quantized",
        quantization_status=QuantizationStatus.COMPRESSED,
        ignore=ignore,
    )
    return {**config.model_dump(mode="json"), "version": __version__}


def write_compressed_tensors(lm: LoadedModel, folder: Path, units: list[PackedUnit]) -> None:
    """The checkpoint directory: packed units, every other tensor dense, the config block."""
    tensors = dense_tensors(lm.model)
    dtype = lm.model.get_input_embeddings().weight.dtype
    for u in units:
        tensors.pop(f"{u.name}.weight")
        tensors[f"{u.name}.weight_packed"] = _pack(u.codes, u.bits)
        tensors[f"{u.name}.weight_scale"] = u.scale.to(dtype).contiguous()
        tensors[f"{u.name}.weight_shape"] = torch.tensor(tuple(u.codes.shape))
    config = quantization_config(lm, units)
    write_checkpoint(folder, lm.model, lm.tokenizer, tensors, {"quantization_config": config})
