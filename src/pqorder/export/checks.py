"""Refusals every export format shares, each one clear line before anything is written."""

from __future__ import annotations

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError

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
    act = transforms.activations
    if act is not None:
        what = ", ".join(
            n for n, b in (("unit inputs", act.bits), ("KV cache", act.kv_bits)) if b is not None
        )
        raise ConfigError(
            f"--format {fmt} holds weights only; this model also fake-quantizes {what} in its "
            "forward pass (actquant), which the exported model would silently drop"
        )
