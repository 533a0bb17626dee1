"""Put a loaded model where its placement says, and keep one block at a time on the device.

Without offload the whole model moves to the device. With offload everything outside the
blocks (embeddings, final norm, head, rotary tables) moves to the device and the blocks stay in
host memory: a forward pass moves each block in before it runs and out after it (forward
hooks), and the layer-wise walk pins the block it is calibrating and compressing on the device
(``resident``) so its statistics, its compressed weights and its outputs are computed there.
Peak device memory is then one block plus its activations and statistics.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from pqorder.core import LoadedModel
from pqorder.hardware import CPU, Placement
from pqorder.models.adapter import decoder_blocks

_PINNED = "_pqorder_pinned"  # attribute set on a block while the walk keeps it on the device


def _move_outside(module: nn.Module, blocks: nn.Module, device: torch.device) -> None:
    """Move every parameter and buffer of ``module`` except those inside ``blocks``."""
    if module is blocks:
        return
    if not any(m is blocks for m in module.modules()):
        module.to(device)
        return
    module._apply(lambda t: t.to(device), recurse=False)  # its own tensors, tied ones in place
    for child in module.children():
        _move_outside(child, blocks, device)


def _hooks(block: nn.Module, device: torch.device) -> None:
    def enter(module: nn.Module, _args: tuple) -> None:
        if not getattr(module, _PINNED, False):
            module.to(device)

    def leave(module: nn.Module, _args: tuple, _out: object) -> None:
        if not getattr(module, _PINNED, False):
            module.to(CPU)

    block.register_forward_pre_hook(enter)
    block.register_forward_hook(leave)


def place_model(lm: LoadedModel) -> None:
    """Move ``lm.model`` to its placement (called once, when the model is loaded)."""
    placement, model = lm.placement, lm.model
    if not placement.offload:
        model.to(placement.device)
        return
    _, blocks = decoder_blocks(model)
    _move_outside(model, blocks, placement.device)
    for block in blocks:
        block.to(CPU)
        _hooks(block, placement.device)


@contextlib.contextmanager
def resident(block: nn.Module, placement: Placement) -> Iterator[None]:
    """Keep ``block`` on the device for the duration (a no-op without offload)."""
    if not placement.offload:
        yield
        return
    block.to(placement.device)
    setattr(block, _PINNED, True)
    try:
        yield
    finally:
        setattr(block, _PINNED, False)
        block.to(CPU)
