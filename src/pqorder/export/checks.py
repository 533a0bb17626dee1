"""Refusals every export format shares, each one clear line before anything is written."""

from __future__ import annotations

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError


def check_plain_forward(lm: LoadedModel, fmt: str) -> None:
    """Refuse a non-causal-LM model, or one whose forward pass runs transforms the plain
    architecture does not (online rotation, activation / KV fake quantization)."""
    if lm.kind != "causal-lm":
        raise ConfigError(
            f"--format {fmt} holds causal language models only, not a {lm.kind} model"
        )
    transforms = lm.state.model
    if transforms.rotation is not None and transforms.rotation.online:
        raise ConfigError(
            f"--format {fmt} cannot express the online Hadamard rotation (MLP down-projection "
            "input, queries/keys) of this QuaRot model; rotate with online=false to export it"
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
