"""Unmerged LoRA adapters in the module tree: PEFT layers around units, made to match the state.

``state.model.adapters`` says which units carry an adapter (rank, alpha); ``set_adapters``
(called by ``transforms.sync``) wraps exactly those units in PEFT's LoRA layers, or unwraps
them, so snapshots and cached prefixes of a model with unmerged adapters restore like any other
structure (the factors are model tensors, loaded after the structure is rebuilt). A wrapped unit
keeps its name (``compressible_units`` sees through PEFT's ``base_layer``) and its constraint.
Fresh factors are initialized under the adapters' seed, without touching the global RNG.
"""

from __future__ import annotations

import importlib.util

import torch
from torch import Tensor, nn

from pqorder.errors import ConfigError
from pqorder.state import Adapters

ADAPTER = "default"  # PEFT's name of the one adapter pqorder installs
EXTRA = "pip install 'pqorder[lora]'"


def check_peft() -> None:
    """LoRA needs PEFT (the ``lora`` extra): refused with one line when it is missing."""
    if importlib.util.find_spec("peft") is None:
        raise ConfigError(f"lora needs the PEFT library, which is not installed: {EXTRA}")


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The unmerged PEFT LoRA layers of ``model``, by module name (the name of the unit each
    wraps)."""
    if importlib.util.find_spec("peft") is None:
        return {}
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def unwrapped(module: nn.Module) -> nn.Module:
    """The unit itself, whether or not an unmerged adapter wraps it."""
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _unwrap(model: nn.Module) -> None:
    """Put every wrapped unit back in its parent, its weight untouched (adapters dropped)."""
    for name, wrapper in adapter_layers(model).items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, wrapper.get_base_layer())
    if hasattr(model, "peft_config"):  # PEFT's record of the injected adapter
        del model.peft_config


def _wrap(model: nn.Module, spec: Adapters) -> None:
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=list(spec.units),  # full names: PEFT matches them exactly
    )
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, p in model.named_parameters():  # PEFT freezes everything else: undo that
        if name in trainable:
            p.requires_grad_(trainable[name])


def set_adapters(model: nn.Module, spec: Adapters | None) -> None:
    """Make ``model`` carry exactly the adapters ``spec`` describes (none when None)."""
    wrapped = adapter_layers(model)
    if spec is None and not wrapped:
        return
    if spec is not None:
        check_peft()
        current = {name: (w.r[ADAPTER], w.lora_alpha[ADAPTER]) for name, w in wrapped.items()}
        if current == {name: (spec.rank, spec.alpha) for name in spec.units}:
            return
    _unwrap(model)
    if spec is not None:
        _wrap(model, spec)


def delta(wrapper: nn.Module) -> Tensor:
    """The adapter's weight update scaling·B·A in the wrapped unit's own layout (float32)."""
    return wrapper.get_delta_weight(ADAPTER).detach().float()


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA factors of ``model`` (what training updates)."""
    return [p for name, p in model.named_parameters() if ".lora_" in name]
