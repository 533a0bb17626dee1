"""QuaRot as one step: rotate, quantize the weights (RTN or GPTQ), fake-quantize activations.

Presets name the usual targets: W4A16 (weights only), W4A8, W4A4KV4. Weights are quantized
symmetric per output channel (``group`` for groups) after the rotation, activations per token
clipped to 0.9 of their range, keys/values per head clipped to 0.95, as in the QuaRot paper.
GPTQ calibrates on the rotated model with full-precision activations (the activation
quantization is installed last).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import Literal

from pqorder.core import LoadedModel, ModelOutcome, Need, StepContext
from pqorder.methods.actquant import ActQuantConfig, install_activation_quant
from pqorder.methods.base import Method, MethodConfig, ModelMethod, register
from pqorder.methods.gptq import GPTQ, GPTQConfig
from pqorder.methods.rotate import check_rotation, rotate_model
from pqorder.methods.rtn import RTN, QuantConfig
from pqorder.models.architecture import Capability
from pqorder.state import Rotation

PRESETS = {"W4A16": (4, None, None), "W4A8": (4, 8, None), "W4A4KV4": (4, 4, 4)}


class QuaRotConfig(MethodConfig):
    """``preset`` W4A16|W4A8|W4A4KV4; ``weights`` rtn|gptq; ``group`` (0 = per channel)."""

    preset: Literal["W4A16", "W4A8", "W4A4KV4"] = "W4A4KV4"
    weights: Literal["rtn", "gptq"] = "gptq"
    group: int = 0
    seed: int = 0
    always_show = ("preset", "weights")


@register
class QuaRot(ModelMethod):
    name = "quarot"
    family = "quantize"
    granularities = "model (rotation) + output channel/group (weights) + token (activations)"
    summary = "QuaRot(+GPTQ) presets: rotation, weight and activation/KV quantization in one step"
    Config = QuaRotConfig
    example = "quarot:preset=W4A8,weights=rtn"
    kinds = frozenset({"causal-lm"})  # decoders of a family that supports rotation (checked)
    rotates = True
    keeps_units = False

    def __init__(self, config: QuaRotConfig) -> None:
        super().__init__(config)
        bits, a_bits, kv_bits = PRESETS[config.preset]
        quant = QuantConfig(bits=bits, group=config.group, sym=True)
        self.weights: RTN = (
            GPTQ(GPTQConfig(**quant.model_dump())) if config.weights == "gptq" else RTN(quant)
        )
        self.activations = (
            ActQuantConfig(bits=a_bits, clip=0.9, kv_bits=kv_bits, kv_clip=0.95)
            if a_bits or kv_bits
            else None
        )

    @property
    def capabilities(self) -> frozenset[Capability]:
        kv = self.activations is not None and self.activations.kv_bits is not None
        return frozenset({"rotate", "kv-cache"} if kv else {"rotate"})

    @property
    def needs(self) -> Need:
        return self.weights.needs

    @property
    def granularity(self) -> str:
        return self.weights.granularity

    def check_unit(self, name: str, shape: tuple[int, int]) -> None:
        self.weights.check_unit(name, shape)

    def check_composition(self, lm: LoadedModel, earlier: Sequence[Method]) -> None:
        check_rotation(lm, earlier, force=False)

    def apply(self, ctx: StepContext) -> ModelOutcome:
        lm = ctx.lm
        rotation = Rotation("hadamard", self.config.seed, online=True)
        rotate_model(lm, rotation)
        label = f"{self.name} weights ({self.weights.name}:bits={self.weights.config.bits})"
        outcome = ctx.compress_units(self.weights, label)
        outcome.details["rotation"] = asdict(rotation)
        if self.activations is not None:
            act = install_activation_quant(lm, self.activations)
            outcome.details["activations"] = asdict(act)
        return outcome
