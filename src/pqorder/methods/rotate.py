"""QuaRot rotation (Ashkboos et al., 2024): the same function, with outliers spread out.

RMSNorm scales are folded into the Linears that read the normalized stream (families whose
``Architecture`` supports ``rotate``: LLaMA, Mistral, Qwen2, Qwen3), then the residual
stream is rotated by a randomized orthogonal Hadamard matrix Q fused into every weight: the
embeddings and the Linears reading the stream (q/k/v, gate/up, lm_head) take W·Q, those
writing it (o_proj, down_proj) take Qᵀ·W. With ``online``, the down-projection input is
rotated at run time (its weight holds the inverse), the values of each head are rotated inside
v_proj/o_proj, and queries/keys are rotated after RoPE (``pqorder.transforms``). Before any
quantization the rotated model computes the same logits up to float rounding.

A rotation mixes every input feature into every weight: zeros of earlier pruning become dense
and weights leave an earlier quantization grid, so it refuses to follow such steps unless
``force`` (which drops those constraints). Pruning after a rotation works on rotated weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict
from typing import Literal

import torch
from torch import Tensor, nn

from pqorder.core import LoadedModel, ModelOutcome, StepContext
from pqorder.errors import ConfigError, OrderError
from pqorder.hadamard import random_rotation
from pqorder.methods.base import Method, MethodConfig, ModelMethod, register
from pqorder.models.adapter import compressible_units, decoder_blocks
from pqorder.models.architecture import Capability, architecture, attention_layout
from pqorder.state import Rotation
from pqorder.transforms import online_rotation, sync


class RotateConfig(MethodConfig):
    """``rotation`` hadamard|orthogonal; ``seed`` of the random signs; ``online`` transforms."""

    rotation: Literal["hadamard", "orthogonal"] = "hadamard"
    seed: int = 0
    online: bool = True
    force: bool = False


def _constrained_by(lm: LoadedModel, earlier: Sequence[Method]) -> list[str]:
    """What would lose its constraint: earlier weight-constraining steps, or stored masks/grids."""
    names = [m.name for m in earlier if m.constrains_weights]
    stored = any(c.mask is not None or c.grid is not None for c in lm.state.units.values())
    return names + (["the loaded model's masks/grids"] if stored else [])


def check_rotation(lm: LoadedModel, earlier: Sequence[Method], force: bool) -> None:
    """The composition rules of a rotation, checked before any work."""
    if lm.state.model.rotation is not None or any(m.rotates for m in earlier):
        raise ConfigError("the model is already rotated; rotate once, before other steps")
    before = _constrained_by(lm, earlier)
    if before and not force:
        raise OrderError(
            f"rotation after {', '.join(before)} would destroy their sparsity and grids: it "
            f"mixes every input feature into every weight, so pruned zeros become dense and "
            f"weights leave the quantization grid. Rotate first (pruning after a rotation "
            f"works), or pass force=true to rotate anyway and drop those constraints"
        )


def _scale_columns(linears: Sequence[nn.Linear], norm: nn.Module) -> None:
    g = norm.weight.double()
    for lin in linears:
        lin.weight.copy_(lin.weight.double() * g[None, :].to(lin.weight.device))
    norm.weight.fill_(1.0)


def _inputs(lin: nn.Module, m: Tensor) -> None:
    """The Linear reads x·m instead of x: W ← W·m (in float64 on the weight's device)."""
    lin.weight.copy_(lin.weight.double() @ m.to(lin.weight.device))


def _outputs(lin: nn.Module, m: Tensor) -> None:
    """The Linear writes y·m instead of y: W ← mᵀ·W (and its bias)."""
    m = m.to(lin.weight.device)
    lin.weight.copy_(m.t() @ lin.weight.double())
    if lin.bias is not None:
        lin.bias.copy_(lin.bias.double() @ m)


def _rotate_heads(v_proj: nn.Linear, o_proj: nn.Linear, r: Tensor) -> None:
    """Each head's values come out as v·r (v_proj rows), o_proj's columns take the inverse."""
    hd = r.shape[0]
    r = r.to(v_proj.weight.device)
    w = v_proj.weight.double().view(-1, hd, v_proj.weight.shape[1])
    v_proj.weight.copy_(torch.einsum("ji,hjd->hid", r, w).reshape(v_proj.weight.shape))
    if v_proj.bias is not None:
        v_proj.bias.copy_((v_proj.bias.double().view(-1, hd) @ r).reshape(-1))
    wo = o_proj.weight.double().view(o_proj.weight.shape[0], -1, hd)
    o_proj.weight.copy_((wo @ r).reshape(o_proj.weight.shape))


@torch.no_grad()
def rotate_model(lm: LoadedModel, rotation: Rotation) -> None:
    """Fold the norms and fuse ``rotation`` into ``lm`` (a family that supports it), recording
    it in state."""
    model = lm.model
    arch = architecture(model)
    lm.state.model.rotation = rotation
    sync(lm)  # unties lm_head and installs the online transforms the fused weights assume
    _, blocks = decoder_blocks(model)
    q = random_rotation(model.config.hidden_size, rotation.seed, rotation.kind)
    for block in blocks:
        qkv = [block.get_submodule(n) for n in arch.qkv]
        mlp_in = [block.get_submodule(n) for n in arch.mlp_in]
        attn_norm, mlp_norm = (block.get_submodule(n) for n in arch.input_norms)
        out, down = block.get_submodule(arch.attention_out), block.get_submodule(arch.mlp_out)
        _scale_columns(qkv, attn_norm)
        _scale_columns(mlp_in, mlp_norm)
        for lin in [*qkv, *mlp_in]:
            _inputs(lin, q)
        _outputs(out, q)
        _outputs(down, q)
        if rotation.online:
            _inputs(down, online_rotation(down.in_features, rotation.kind, rotation.seed).double())
            hd = attention_layout(model.config).head_dim
            r = online_rotation(hd, rotation.kind, rotation.seed).double()
            _rotate_heads(qkv[2], out, r)  # v_proj: rotation needs separate q/k/v
    head = model.get_output_embeddings()
    _scale_columns([head], model.get_submodule(arch.final_norm))
    _inputs(head, q)
    emb = model.get_input_embeddings()
    emb.weight.copy_(emb.weight.double() @ q.to(emb.weight.device))


@register
class Rotate(ModelMethod):
    name = "rotate"
    family = "rotate"
    granularities = "residual stream (whole model)"
    summary = "QuaRot: fold RMSNorm, fuse a randomized Hadamard rotation into every weight"
    Config = RotateConfig
    example = "rotate"
    kinds = frozenset({"causal-lm"})  # decoders of a family that supports it (checked)
    rotates = True
    keeps_units = False

    @property
    def granularity(self) -> str:
        return "model"

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({"rotate"})

    def check_composition(self, lm: LoadedModel, earlier: Sequence[Method]) -> None:
        check_rotation(lm, earlier, self.config.force)

    def apply(self, ctx: StepContext) -> ModelOutcome:
        lm = ctx.lm
        cfg = self.config
        if lm.state.units:
            sparsity = [c.sparsity() for c in lm.state.units.values()]
            warnings.warn(
                f"forced rotation dropped the masks and grids of {len(sparsity)} units "
                f"(mean sparsity {sum(sparsity) / len(sparsity):.1%} → 0%)",
                stacklevel=2,
            )
            lm.state.units.clear()
        rotation = Rotation(cfg.rotation, cfg.seed, cfg.online)
        rotate_model(lm, rotation)
        return ModelOutcome(list(compressible_units(lm.model)), {"rotation": asdict(rotation)})
