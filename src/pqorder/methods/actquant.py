"""Activation and KV-cache fake quantization: no weight changes, a quantized forward pass.

Every compressible unit's input is rounded dynamically with ``bits`` bits, the range clipped to
``clip`` of the maximum: per token (``per=token``; for a Conv2d, per pixel across its input
channels) or over the whole tensor (``per=tensor``, the usual CNN setting), symmetric or
asymmetric min-max (``sym=false`` suits post-ReLU inputs). Keys and values are rounded per
token and head (asymmetric, ``kv_bits``; decoder families whose ``Architecture`` supports
``kv-cache``). After a rotation the inputs are the rotated ones, which is what makes 4-bit
activations workable. Combined with an earlier activation step, the setting with the lower
bit-width of each kind is kept.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

from pydantic import field_validator, model_validator

from pqorder.core import LoadedModel, ModelOutcome, StepContext
from pqorder.methods.base import MethodConfig, ModelMethod, register
from pqorder.models.architecture import Capability
from pqorder.state import ActivationQuant
from pqorder.transforms import sync


class ActQuantConfig(MethodConfig):
    """``bits`` of unit inputs (``per`` token|tensor, ``sym``) and ``kv_bits`` of keys/values
    (each 2..16 or unset)."""

    bits: int | None = 8
    clip: float = 1.0
    per: Literal["token", "tensor"] = "token"
    sym: bool = True
    kv_bits: int | None = None
    kv_clip: float = 1.0
    always_show = ("bits",)

    @field_validator("bits", "kv_bits")
    @classmethod
    def _bits_range(cls, v: int | None) -> int | None:
        if v is not None and not 2 <= v <= 16:
            raise ValueError(f"unsupported activation bit-width {v}; use 2 to 16")
        return v

    @field_validator("clip", "kv_clip")
    @classmethod
    def _clip_range(cls, v: float) -> float:
        if not 0 < v <= 1:
            raise ValueError(f"clip ratio must be in (0, 1], got {v}")
        return v

    @model_validator(mode="after")
    def _something(self) -> ActQuantConfig:
        if self.bits is None and self.kv_bits is None:
            raise ValueError("set bits, kv_bits or both")
        return self


def _keeps_old(old: int | None, new: int | None) -> bool:
    """Whether the earlier bit-width stays: the new one is unset or not lower."""
    return new is None or (old is not None and old < new)


def install_activation_quant(lm: LoadedModel, cfg: ActQuantConfig) -> ActivationQuant:
    """Record the fake quantization in the state (combined with any earlier one) and sync."""
    new = ActivationQuant(cfg.bits, cfg.clip, cfg.kv_bits, cfg.kv_clip, cfg.per, cfg.sym)
    old = lm.state.model.activations
    if old is not None:
        inputs = old if _keeps_old(old.bits, new.bits) else new
        kv = old if _keeps_old(old.kv_bits, new.kv_bits) else new
        new = ActivationQuant(
            inputs.bits, inputs.clip, kv.kv_bits, kv.kv_clip, inputs.per, inputs.sym
        )
    lm.state.model.activations = new
    sync(lm)
    return new


@register
class ActQuant(ModelMethod):
    name = "actquant"
    family = "quantize"
    granularities = "token or tensor (activations), token × head (KV cache)"
    summary = "fake-quantize unit inputs (per token or tensor) and the KV cache per head"
    Config = ActQuantConfig
    example = "actquant:bits=8"
    constrains_weights = False
    works_on_factors = True  # hooks every unit's input, factors included

    @property
    def granularity(self) -> str:
        return self.config.per

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset() if self.config.kv_bits is None else frozenset({"kv-cache"})

    def apply(self, ctx: StepContext) -> ModelOutcome:
        return ModelOutcome(
            [], {"activations": asdict(install_activation_quant(ctx.lm, self.config))}
        )
