"""Dense export with pruned structure sliced out: a smaller plain checkpoint transformers loads.

What shrinks: blocks removed by SLEB (already gone from the module list; the config says how
many remain) and MLP channels of LLaMA models. A channel j is dead when its gate_proj or up_proj
row is fully masked (SiLU(0)·u = g·0 = 0), so dropping row j of gate/up and column j of down
changes no output. Plain transformers has one ``intermediate_size`` for all layers: every
layer keeps as many channels as the widest one, a narrower layer filling up with dead channels
(still exact zeros). Pruned attention heads stay as zero rows with a note (one head count per
model and GQA grouping cannot express per-layer heads). Weights are written in fp32 as they
are (values still on their grids, not packed: use compressed-tensors or gguf for that). The
built-in ResNet CNNs lose their removable pruned filters instead (``shrink_cnn``).
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


def _kept_channels(lm: LoadedModel, prefix: str, width: int) -> Tensor:
    """Boolean (width,) of the MLP channels of block ``prefix`` that can change the output."""
    dead = torch.zeros(width, dtype=torch.bool)
    for part in ("gate_proj", "up_proj"):
        rows = _dead_rows(lm, f"{prefix}.mlp.{part}")
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
    if not all(hasattr(b, "mlp") and hasattr(b.mlp, "gate_proj") for b in blocks):
        return plan
    if getattr(config, "mlp_bias", False):
        raise ConfigError("--format dense: MLP biases keep pruned channels alive; not sliced")
    width = config.intermediate_size
    kept = [_kept_channels(lm, f"{path}.{i}", width) for i in range(len(blocks))]
    keep = max(int(k.sum()) for k in kept)
    if keep < width:
        for i, alive in enumerate(kept):
            order = torch.argsort(alive.to(torch.int8), descending=True, stable=True)
            index = order[:keep].sort().values  # all live channels, then dead ones if short
            mlp = f"{path}.{i}.mlp"
            for part in ("gate_proj", "up_proj"):
                key = f"{mlp}.{part}.weight"
                tensors[key] = tensors[key][index].contiguous()
            key = f"{mlp}.down_proj.weight"
            tensors[key] = tensors[key][:, index].contiguous()
        plan.config["intermediate_size"] = keep
        plan.notes.append(f"MLP channels sliced out: {width} → {keep} per layer")
    heads = [_dead_rows(lm, f"{path}.{i}.self_attn.q_proj") for i in range(len(blocks))]
    if any(h is not None and bool(h.any()) for h in heads):
        plan.notes.append("pruned attention heads stay as zero rows (not sliced)")
    return plan


def write_dense(lm: LoadedModel, folder: Path, plan: DensePlan | CnnPlan) -> None:
    """A plain HF checkpoint of the planned tensors (no pqorder state, no quantization)."""
    if isinstance(plan, CnnPlan):
        write_cnn(folder, plan)
        return
    write_checkpoint(folder, lm.model, lm.tokenizer, plan.tensors, plan.config)
