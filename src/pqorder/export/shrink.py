"""Dense export with pruned structure sliced out: a smaller plain checkpoint transformers loads.

What shrinks: blocks removed by SLEB (already gone from the module list; the config says how
many remain), MLP channels and attention heads of the families structured pruning supports
(their ``Architecture`` names the units). A channel j is dead when its gate_proj or up_proj
row is fully masked (act(0)·u = act(g)·0 = 0), so dropping row j of gate/up
and column j of down changes no output. Plain transformers has one ``intermediate_size`` for
all layers: every layer keeps as many channels as the widest one, a narrower layer filling up
with dead channels (still exact zeros). Attention heads likewise: a head whose o_proj columns
are all masked adds nothing, so its q_proj rows and o_proj columns go; a key/value head goes
with the last query head of its group. Every layer keeps as many KV groups, and every group as
many query heads, as the fullest layer/group needs (padding with dead heads: their output is
zero whatever their attention pattern), and the config gets the new head counts with
``head_dim`` written out. Weights are written in fp32 as they are (values still on their
grids, not packed: use compressed-tensors or gguf for that). The built-in ResNet CNNs lose
their removable pruned filters instead (``shrink_cnn``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError
from pqorder.export.checkpoint import dense_tensors, write_checkpoint
from pqorder.export.checks import check_plain_forward
from pqorder.export.shrink_cnn import CnnPlan, plan_cnn, write_cnn
from pqorder.models.adapter import decoder_blocks
from pqorder.models.architecture import Architecture, architecture, attention_layout


@dataclass
class DensePlan:
    """Tensors to write, config fields that change, and notes for the user."""

    tensors: dict[str, Tensor]
    config: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _dead_rows(lm: LoadedModel, name: str) -> Tensor | None:
    """Rows of a unit whose every weight is masked (None when the unit has no mask)."""
    mask = lm.state.get(name).mask
    return None if mask is None else ~mask.any(dim=1)


def _kept_channels(lm: LoadedModel, arch: Architecture, prefix: str, width: int) -> Tensor:
    """Boolean (width,) of the MLP channels of block ``prefix`` that can change the output."""
    dead = torch.zeros(width, dtype=torch.bool)
    for part in arch.mlp_in:  # gate and up
        rows = _dead_rows(lm, f"{prefix}.{part}")
        if rows is not None:
            dead |= rows
    return ~dead


def plan_dense(lm: LoadedModel) -> DensePlan | CnnPlan:
    """Check the model and slice the dead MLP channels out of every block's tensors (a
    built-in CNN: its removable pruned filters, see ``shrink_cnn``)."""
    check_plain_forward(lm, "dense", ("causal-lm", "vision"))
    if lm.kind == "vision":
        return plan_cnn(lm)
    config = lm.model.config
    tensors = dense_tensors(lm.model)
    plan = DensePlan(tensors)
    if lm.state.model.removed_blocks:
        plan.notes.append(
            f"{len(lm.state.model.removed_blocks)} removed blocks are left out "
            f"({config.num_hidden_layers} remain)"
        )
    path, blocks = decoder_blocks(lm.model)
    arch = architecture(lm.model)
    if not arch.supports("structured"):  # no heads or channels were pruned as a whole
        return plan
    if getattr(config, "mlp_bias", False):
        raise ConfigError("--format dense: MLP biases keep pruned channels alive; not sliced")
    width = config.intermediate_size
    kept = [_kept_channels(lm, arch, f"{path}.{i}", width) for i in range(len(blocks))]
    keep = max(int(k.sum()) for k in kept)
    if keep < width:
        for i, alive in enumerate(kept):
            index = _live_first(alive, keep)  # all live channels, then dead ones if short
            for part in arch.mlp_in:
                _take(tensors, f"{path}.{i}.{part}", index, dim=0)
            _take(tensors, f"{path}.{i}.{arch.mlp_out}", index, dim=1)
        plan.config["intermediate_size"] = keep
        plan.notes.append(f"MLP channels sliced out: {width} → {keep} per layer")
    _slice_heads(lm, arch, path, len(blocks), plan)
    return plan


def _live_heads(lm: LoadedModel, o_proj: str, heads: int, hd: int) -> Tensor:
    """Boolean (heads,) of the query heads of one block whose o_proj columns are not all masked."""
    mask = lm.state.get(o_proj).mask
    if mask is None:
        return torch.ones(heads, dtype=torch.bool)
    return mask.any(dim=0).view(heads, hd).any(dim=1)


def _slice_heads(
    lm: LoadedModel, arch: Architecture, path: str, n_blocks: int, plan: DensePlan
) -> None:
    """Drop dead query heads (and KV heads left without a live query head) from every block."""
    layout = attention_layout(lm.model.config)
    heads, hd, groups = layout.heads, layout.head_dim, layout.kv_heads
    per = heads // groups
    live = [
        _live_heads(lm, f"{path}.{i}.{arch.attention_out}", heads, hd).view(groups, per)
        for i in range(n_blocks)
    ]
    keep_groups = max(int(h.any(dim=1).sum()) for h in live)
    keep_per = max(int(h.sum(dim=1).max()) for h in live)
    if (keep_groups, keep_per) == (groups, per):
        if any(not bool(h.all()) for h in live):
            plan.notes.append(
                "pruned attention heads stay as zero rows: some layer keeps a live head in "
                f"every one of its {per} query slots of a KV group (prune a multiple of "
                f"{groups} heads per layer to slice them)"
            )
        return
    for i, alive in enumerate(live):
        group_index = _live_first(alive.any(dim=1), keep_groups)
        q_heads = torch.cat([g * per + _live_first(alive[g], keep_per) for g in group_index])
        q, k, v = (f"{path}.{i}.{part}" for part in arch.qkv)
        _take(plan.tensors, q, _rows(q_heads, hd), dim=0)
        _take(plan.tensors, f"{path}.{i}.{arch.attention_out}", _rows(q_heads, hd), dim=1)
        for part in (k, v):
            _take(plan.tensors, part, _rows(group_index, hd), dim=0)
    plan.config.update(
        num_attention_heads=keep_groups * keep_per, num_key_value_heads=keep_groups, head_dim=hd
    )
    plan.notes.append(
        f"attention heads sliced out: {heads} query / {groups} KV → "
        f"{keep_groups * keep_per} / {keep_groups} per layer"
    )


def _live_first(alive: Tensor, keep: int) -> Tensor:
    """The indices of ``keep`` entries, every live one first, in their original order."""
    order = torch.argsort(alive.to(torch.int8), descending=True, stable=True)
    return order[:keep].sort().values


def _rows(heads: Tensor, hd: int) -> Tensor:
    """The row indices of whole heads of width ``hd``."""
    return (heads[:, None] * hd + torch.arange(hd)).reshape(-1)


def _take(tensors: dict[str, Tensor], unit: str, index: Tensor, dim: int) -> None:
    """Keep ``index`` along ``dim`` of a unit's weight (and of its bias for rows)."""
    key = f"{unit}.weight"
    tensors[key] = tensors[key].index_select(dim, index).contiguous()
    if dim == 0 and f"{unit}.bias" in tensors:
        tensors[f"{unit}.bias"] = tensors[f"{unit}.bias"][index].contiguous()


def write_dense(lm: LoadedModel, folder: Path, plan: DensePlan | CnnPlan) -> None:
    """A plain HF checkpoint of the planned tensors (no pqorder state, no quantization)."""
    if isinstance(plan, CnnPlan):
        write_cnn(folder, plan)
        return
    write_checkpoint(folder, lm.model, lm.tokenizer, plan.tensors, plan.config)
