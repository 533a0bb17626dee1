"""Activation and KV-cache fake quantization: no weight changes, a quantized forward pass.

Every compressible unit's input is rounded per token (symmetric, ``bits``, range clipped to
``clip`` of the maximum); keys and values per token and head (asymmetric, ``kv_bits``). After a
rotation the inputs are the rotated ones, which is what makes 4-bit activations workable.
Combined with an earlier activation step, the lower bit-width of each kind is kept.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import field_validator, model_validator
from torch import Tensor

from pqorder.methods.base import MethodConfig, ModelMethod, ModelOutcome, register
from pqorder.state import ActivationQuant
from pqorder.transforms import sync


class ActQuantConfig(MethodConfig):
    """``bits`` of unit inputs and ``kv_bits`` of keys/values (each 2..16 or unset)."""

    bits: int | None = 8
    clip: float = 1.0
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


def _lower(a: int | None, b: int | None) -> int | None:
    return b if a is None else a if b is None else min(a, b)


def install_activation_quant(lm: Any, cfg: ActQuantConfig) -> ActivationQuant:
    """Record the fake quantization in the state (combined with any earlier one) and sync."""
    old = lm.state.model.activations
    new = ActivationQuant(cfg.bits, cfg.clip, cfg.kv_bits, cfg.kv_clip)
    if old is not None:
        new = ActivationQuant(
            _lower(old.bits, new.bits),
            min(old.clip, new.clip),
            _lower(old.kv_bits, new.kv_bits),
            min(old.kv_clip, new.kv_clip),
        )
    lm.state.model.activations = new
    sync(lm)
    return new


@register
class ActQuant(ModelMethod):
    name = "actquant"
    family = "quantize"
    granularities = "token (activations), token × head (KV cache)"
    summary = "fake-quantize unit inputs per token and the KV cache per head"
    Config = ActQuantConfig
    constrains_weights = False

    @property
    def granularity(self) -> str:
        return "token"

    def apply(
        self, lm: Any, calibration: Tensor | None, progress: bool, sequential: bool
    ) -> ModelOutcome:
        return ModelOutcome([], {"activations": asdict(install_activation_quant(lm, self.config))})
