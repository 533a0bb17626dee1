"""Dense export of the built-in ResNet CNNs with pruned filters cut out: a smaller torch model.

A filter whose whole row is masked outputs exact zeros, but the BatchNorm after it turns them
into a constant c = BN(0) (then ReLU), so the channel is not free to drop: its constant is
folded into the layer that reads it. What is cut, per BasicBlock:

- ``conv1`` filters: the filter, its ``bn1`` entries and the matching input channels of
  ``conv2``; the constant's contribution to ``conv2`` becomes a fixed map (a ShiftedConv2d:
  zero padding makes it differ at the borders, so it is not a per-channel bias).
- ``conv2`` filters only where the channel is not shared with a skip path in a way that keeps
  it alive: the block must have a convolution shortcut whose filter for the same channel is
  pruned too (then the block output is the constant ReLU(bn2(0) + bn_s(0))), and the next
  reader must take it through convolutions (the next block's ``conv1`` and its convolution
  shortcut: fixed maps) or the head (average pool then Linear: folded into the head's bias).
  A filter next to an identity shortcut, or with a live shortcut filter, stays as a zero row.

The folded constants are exact: outputs change only by float rounding. The export is a
directory with ``model.safetensors`` and ``pqorder_vision.json`` (``load_model(dir)`` rebuilds
it) and ``model.pt2`` (``torch.export.load(path).module()``, no pqorder needed).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError
from pqorder.models.loading import VISION_FILE
from pqorder.models.vision import BasicBlock, resize_to

CNNS = ("digits-cnn", "fmnist-cnn")
PROGRAM_FILE = "model.pt2"


@dataclass
class CnnPlan:
    """The shape-reduced state dict, the model built from it, and notes for the user."""

    tensors: dict[str, Tensor]
    model: nn.Module
    arch: str
    notes: list[str] = field(default_factory=list)


def _dead(lm: LoadedModel, name: str) -> Tensor:
    """Filters (rows) of a unit whose every weight is masked."""
    mask = lm.state.get(name).mask
    width = lm.model.get_submodule(name).out_channels
    return torch.zeros(width, dtype=torch.bool) if mask is None else ~mask.any(dim=1)


@torch.no_grad()
def _input_sizes(model: nn.Module) -> dict[str, tuple[int, int]]:
    """(H, W) of the input of every Conv2d, for the model's one input shape."""
    sizes: dict[str, tuple[int, int]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_m: nn.Module, inputs: tuple[Tensor, ...], _out: Tensor) -> None:
            sizes[name] = tuple(inputs[0].shape[-2:])

        return hook

    hooks = [
        m.register_forward_hook(record(n))
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    try:
        model(torch.zeros(1, *model.input_shape))
    finally:
        for h in hooks:
            h.remove()
    return sizes


def _bn_at_zero(t: dict[str, Tensor], bn: str) -> Tensor:
    """What BatchNorm ``bn`` (eval mode) outputs for a zero input, per channel."""
    zero = torch.zeros(1, t[f"{bn}.weight"].shape[0], 1, 1)
    stats = (t[f"{bn}.running_mean"], t[f"{bn}.running_var"], t[f"{bn}.weight"], t[f"{bn}.bias"])
    eps = 1e-5  # nn.BatchNorm2d's default, the one the built-in CNNs use
    return nn.functional.batch_norm(zero, *stats, training=False, eps=eps).flatten()


def _cut_rows(t: dict[str, Tensor], layer: str, keep: Tensor) -> None:
    """Keep output channels ``keep`` of a conv or BatchNorm (every per-channel entry)."""
    for key in [k for k in t if k.startswith(f"{layer}.") and k.count(".") == layer.count(".") + 1]:
        if t[key].dim() > 0:
            t[key] = t[key][keep].contiguous()


def _cut_inputs(
    t: dict[str, Tensor], name: str, conv: nn.Conv2d, keep: Tensor, const: Tensor, size: tuple
) -> None:
    """Drop input channels ``~keep`` of ``conv``, which carry the constants ``const``: their
    contribution (the conv of a constant image, zero padded) is added to its fixed map."""
    w = t[f"{name}.weight"]
    image = torch.where(keep, 0.0, const)[None, :, None, None].expand(1, -1, *size)
    shift = nn.functional.conv2d(image, w, None, conv.stride, conv.padding, conv.dilation)[0]
    t[f"{name}.shift"] = t.get(f"{name}.shift", torch.zeros_like(shift)) + shift
    t[f"{name}.weight"] = w[:, keep].contiguous()


def _cut_head(t: dict[str, Tensor], name: str, keep: Tensor, const: Tensor) -> None:
    """Drop input features ``~keep`` of the head Linear (average-pooled constants) into its bias."""
    w = t[f"{name}.weight"]
    t[f"{name}.bias"] = t[f"{name}.bias"] + w[:, ~keep] @ const[~keep]
    t[f"{name}.weight"] = w[:, keep].contiguous()


def _has_conv_shortcut(block: BasicBlock) -> bool:
    return len(block.shortcut) > 0


def _rebuilt(model: nn.Module, tensors: dict[str, Tensor]) -> nn.Module:
    """A copy of ``model`` resized to ``tensors`` and holding them (eval mode)."""
    shrunk = copy.deepcopy(model)
    resize_to(shrunk, tensors)
    shrunk.load_state_dict(tensors)
    return shrunk.eval()


def plan_cnn(lm: LoadedModel) -> CnnPlan:
    """Check that ``lm`` is a built-in ResNet and cut its removable pruned filters."""
    model = lm.model
    arch = getattr(model, "arch", None)
    if arch not in CNNS or not all(isinstance(b, BasicBlock) for b in model.blocks):
        raise ConfigError(
            f"--format dense cuts filters of the built-in ResNet CNNs ({', '.join(CNNS)}) only, "
            f"not of {arch or type(model).__name__}"
        )
    t = {k: v.detach().clone() for k, v in model.state_dict().items()}
    sizes = _input_sizes(model)
    blocks = list(model.blocks)
    cut, stay = [], []
    for i, block in enumerate(blocks):
        p = f"blocks.{i}"
        dead = _dead(lm, f"{p}.conv1")
        if dead.any():
            const = torch.relu(_bn_at_zero(t, f"{p}.bn1"))
            _cut_inputs(t, f"{p}.conv2", block.conv2, ~dead, const, sizes[f"{p}.conv2"])
            _cut_rows(t, f"{p}.conv1", ~dead)
            _cut_rows(t, f"{p}.bn1", ~dead)
            cut.append(f"{p}.conv1 {int(dead.sum())}/{len(dead)}")
        dead = _dead(lm, f"{p}.conv2")
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        if _has_conv_shortcut(block) and (nxt is None or _has_conv_shortcut(nxt)):
            joint = dead & _dead(lm, f"{p}.shortcut.0")
        else:
            joint = torch.zeros_like(dead)
        if int(dead.sum()) > int(joint.sum()):
            stay.append(f"{p}.conv2 {int(dead.sum() - joint.sum())}")
        if not joint.any():
            continue
        const = torch.relu(_bn_at_zero(t, f"{p}.bn2") + _bn_at_zero(t, f"{p}.shortcut.1"))
        for layer in ("conv2", "bn2", "shortcut.0", "shortcut.1"):
            _cut_rows(t, f"{p}.{layer}", ~joint)
        if nxt is None:
            _cut_head(t, "head.2", ~joint, const)
        else:
            for reader in ("conv1", "shortcut.0"):
                name = f"blocks.{i + 1}.{reader}"
                conv = nxt.get_submodule(reader)
                _cut_inputs(t, name, conv, ~joint, const, sizes[name])
        cut.append(f"{p}.conv2 {int(joint.sum())}/{len(joint)}")
    plan = CnnPlan(t, _rebuilt(model, t), arch)
    if cut:
        plan.notes.append(f"pruned filters cut out: {', '.join(cut)}")
    if stay:
        plan.notes.append(
            f"pruned filters kept as zero rows (channel shared with a live skip path): "
            f"{', '.join(stay)}"
        )
    return plan


def write_cnn(folder: Path, plan: CnnPlan) -> None:
    """The state dict and architecture alias (for ``load_model``) and a torch.export program
    (for plain torch); the program takes any batch size of the model's input shape."""
    save_file(plan.tensors, str(folder / "model.safetensors"))
    (folder / VISION_FILE).write_text(json.dumps({"arch": plan.arch}))
    m = plan.model
    graph = nn.Sequential(m.stem, *m.blocks, m.head)  # the forward without its Python checks
    example = torch.zeros(2, *m.input_shape)  # batch 2: a batch of 1 would be specialized
    batch = {0: torch.export.Dim("batch")}
    program = torch.export.export(graph, (example,), dynamic_shapes=(batch,))
    torch.export.save(program, str(folder / PROGRAM_FILE))
