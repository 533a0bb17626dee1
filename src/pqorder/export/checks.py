"""Refusals every export format shares, each one clear line before anything is written."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError
from pqorder.models.adapter import get_weight
from pqorder.quantgrid import QuantGrid

KIND_NAMES = {"causal-lm": "causal language models", "vision": "the built-in ResNet CNNs"}


def check_plain_forward(lm: LoadedModel, fmt: str, kinds: tuple[str, ...] = ("causal-lm",)) -> None:
    """Refuse a model of a kind the format does not hold, or one whose forward pass runs
    transforms the plain architecture does not (online rotation, activation / KV fake
    quantization)."""
    if lm.kind not in kinds:
        held = " and ".join(KIND_NAMES[k] for k in kinds)
        raise ConfigError(f"--format {fmt} holds {held} only, not a {lm.kind} model")
    transforms = lm.state.model
    if transforms.rotation is not None and transforms.rotation.online:
        raise ConfigError(
            f"--format {fmt} cannot express the online Hadamard rotation (MLP down-projection "
            "input, queries/keys) of this QuaRot model; rotate with online=false to export it"
        )
    if transforms.factoring is not None:
        raise ConfigError(
            f"--format {fmt} cannot hold shared basis factors (share): the plain architecture "
            "has one weight per projection; save the model with pqorder's own output instead"
        )
    act = transforms.activations
    if act is not None:
        what = ", ".join(
            n for n, b in (("unit inputs", act.bits), ("KV cache", act.kv_bits)) if b is not None
        )
        raise ConfigError(
            f"--format {fmt} holds weights only; this model also fake-quantizes {what} in its "
            "forward pass (actquant), which the exported model would silently drop"
        )


def signed_codes(name: str, module: nn.Module, grid: QuantGrid, fmt: str) -> Tensor:
    """A unit's codes minus the symmetric zero (int8, host memory), after checking that the
    format can hold its grid (4 or 8 bits, symmetric) and that its weights lie on it (in the
    dtype the model stores them in)."""
    half = 2 ** (grid.bits - 1)
    if grid.bits not in (4, 8):
        raise ConfigError(f"{name}: {grid.bits}-bit grid; {fmt} export holds 4 and 8 bits only")
    if not bool((grid.zero == half).all()):
        raise ConfigError(
            f"{name} is on an asymmetric (zero-point) grid, which {fmt} cannot hold: quantize "
            "with sym=true (e.g. 'rtn:bits=4,group=128,sym=true' or 'gptq:...,sym=true') to "
            "export this model"
        )
    w = get_weight(module).cpu()
    if not grid.contains(w, dtype=module.weight.dtype):
        raise ConfigError(f"{name}: weights are off their recorded grid; the state is stale")
    return (grid.codes(w) - half).to(torch.int8)
