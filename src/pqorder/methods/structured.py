"""Structured pruning of attention heads and MLP channels, masks kept in state (families whose
``Architecture`` supports ``structured``: LLaMA, Mistral, Qwen2, Qwen3, Gemma3).

A pruned query head has its q_proj rows and o_proj columns zeroed (the o_proj columns are what
remove its contribution); a pruned MLP channel j has row j of gate_proj and up_proj zeroed
(act(0)·0 = 0, SiLU or GELU) and column j of down_proj when its input is not rotated online.
Shapes are kept: the zeros are masks in the composition state, so they survive later steps and
can be sliced out at export. Each layer prunes k = ``round(ratio × n)`` of its n heads/channels.
Query heads are spread evenly over their g key/value groups (GQA): every group loses
``⌊k/g⌋`` of its lowest-scoring heads and the ``k mod g`` remaining picks go to the lowest
next candidates, so a model where k is a multiple of g keeps the same number of heads per
group in every layer and the export can slice them out (transformers has one head count).

Scores per head/channel: ``magnitude`` = L2 norm of all its weights; ``activation`` = the
Wanda score summed over it, ‖x_j‖₂·Σ_i|W_ij| over the output projection's columns of the
head/channel (calibration needed). After a rotation with online Hadamard the down-projection input
is rotated; scores are taken back in channel space through the known rotation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal

import torch
from torch import Tensor, nn

from pqorder.core import LoadedModel, ModelOutcome, Need, StepContext
from pqorder.hardware import CPU
from pqorder.layerwise import calibrated_units
from pqorder.methods.base import Fraction, MethodConfig, ModelMethod, register
from pqorder.models.adapter import compressible_units, decoder_blocks, get_weight, set_weight
from pqorder.models.architecture import Capability, architecture, attention_layout
from pqorder.state import UnitConstraint
from pqorder.stats import UnitStats
from pqorder.transforms import online_rotation


class StructuredConfig(MethodConfig):
    """``target`` heads|channels, ``ratio`` of them per layer, ``score`` magnitude|activation."""

    target: Literal["heads", "channels"] = "channels"
    ratio: Fraction = 0.25
    score: Literal["magnitude", "activation"] = "magnitude"
    always_show = ("target", "ratio")


def _zero(
    lm: LoadedModel, name: str, module: nn.Module, rows: Tensor | None, cols: Tensor | None
) -> None:
    """Mask ``rows``/``cols`` of a unit on top of its constraint, then project the weight."""
    w = get_weight(module)
    old = lm.state.get(name).to(w.device)
    mask = old.kept(w).clone()
    if rows is not None:
        mask[rows] = False
    if cols is not None:
        mask[:, cols] = False
    new = UnitConstraint(mask=mask, grid=old.grid)
    set_weight(module, new.project(w))
    lm.state.set(name, new.to(CPU))


@register
class Structured(ModelMethod):
    name = "structured"
    family = "prune"
    granularities = "attention head, MLP channel"
    summary = "zero whole attention heads or MLP channels by magnitude or activation-aware score"
    Config = StructuredConfig
    example = "structured:ratio=0.25"
    kinds = frozenset({"causal-lm"})  # decoders of a family that supports it (checked)

    @property
    def needs(self) -> Need:  # activation norms of each block's output projection
        return Need.STATISTICS if self.config.score == "activation" else Need.NOTHING

    @property
    def granularity(self) -> str:
        return "attention head" if self.config.target == "heads" else "MLP channel"

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({"structured"})

    def _blocks(
        self, lm: LoadedModel, calibration: Tensor | None, progress: bool
    ) -> Iterator[tuple[str, nn.Module, UnitStats | None]]:
        """(block prefix, block, stats of its output projection's input or None)."""
        path, blocks = decoder_blocks(lm.model)
        arch = architecture(lm.model)
        lead = arch.attention_out if self.config.target == "heads" else arch.mlp_out
        if self.needs < Need.STATISTICS:
            for i, block in enumerate(blocks):
                yield f"{path}.{i}", block, None
            return
        units = {f"{path}.{i}.{lead}": b.get_submodule(lead) for i, b in enumerate(blocks)}
        walk = calibrated_units(
            lm.model, units, calibration, progress=progress, label=self.name, placement=lm.placement
        )
        for (name, _module, stats), block in zip(walk, blocks, strict=True):
            yield name.removesuffix(f".{lead}"), block, stats

    def _prune(self, scores: Tensor) -> Tensor:
        k = round(self.config.ratio * scores.numel())
        return torch.argsort(scores)[:k]

    def _prune_heads(self, scores: Tensor, groups: int) -> Tensor:
        """Indices of the query heads to prune, spread evenly over ``groups`` KV groups."""
        k = round(self.config.ratio * scores.numel())
        per_group = scores.view(groups, -1)
        order = torch.argsort(per_group, dim=1)  # each group's heads, lowest score first
        even = k // groups
        offsets = torch.arange(groups, device=order.device)[:, None] * per_group.shape[1]
        picked = (order[:, :even] + offsets).ravel()
        if k % groups:
            nxt = order[:, even]  # each group's next candidate
            extra = torch.argsort(per_group.gather(1, nxt[:, None]).ravel())[: k % groups]
            picked = torch.cat([picked, extra * per_group.shape[1] + nxt[extra]])
        return picked.sort().values

    def apply(self, ctx: StepContext) -> ModelOutcome:
        lm = ctx.lm
        rotation = lm.state.model.rotation
        arch = architecture(lm.model)
        layout = attention_layout(lm.model.config)
        hd, kv_groups = layout.head_dim, layout.kv_heads
        touched = []
        for prefix, block, stats in self._blocks(lm, ctx.calibration, ctx.progress):
            norms = None if stats is None else stats.hessian
            if self.config.target == "heads":
                q, o = arch.qkv[0], arch.attention_out
                q_proj, o_proj = block.get_submodule(q), block.get_submodule(o)
                wq, wo = get_weight(q_proj), get_weight(o_proj)
                if norms is None:
                    per = (wq**2).sum(1).view(-1, hd).sum(1) + (wo**2).sum(0).view(-1, hd).sum(1)
                else:
                    x = torch.sqrt(torch.diagonal(norms).clamp(min=0))
                    per = (x * wo.abs().sum(0)).view(-1, hd).sum(1)
                heads = self._prune_heads(per, kv_groups)
                dims = (heads[:, None] * hd + torch.arange(hd, device=heads.device)).reshape(-1)
                _zero(lm, f"{prefix}.{q}", q_proj, dims, None)
                _zero(lm, f"{prefix}.{o}", o_proj, None, dims)
                touched += [f"{prefix}.{q}", f"{prefix}.{o}"]
                continue
            down = block.get_submodule(arch.mlp_out)
            wd = get_weight(down)
            online = rotation is not None and rotation.online
            h = online_rotation(wd.shape[1], rotation.kind, rotation.seed) if online else None
            if h is not None:
                h = h.to(wd.device)
                wd = wd @ h.t()  # back to channel space
                norms = None if norms is None else h @ norms @ h.t()
            if norms is None:
                wg, wu = (get_weight(block.get_submodule(n)) for n in arch.mlp_in)
                per = (wg**2).sum(1) + (wu**2).sum(1) + (wd**2).sum(0)
            else:
                per = torch.sqrt(torch.diagonal(norms).clamp(min=0)) * wd.abs().sum(0)
            channels = self._prune(per)
            for part in arch.mlp_in:  # gate and up
                _zero(lm, f"{prefix}.{part}", block.get_submodule(part), channels, None)
                touched.append(f"{prefix}.{part}")
            if h is None:
                _zero(lm, f"{prefix}.{arch.mlp_out}", down, None, channels)
                touched.append(f"{prefix}.{arch.mlp_out}")
        units = compressible_units(lm.model)
        return ModelOutcome([n for n in touched if n in units])
