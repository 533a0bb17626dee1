"""The layer-wise sequential walk (GPTQ/SparseGPT protocol), written once for every method.

Capture the inputs of block 0 for the calibration batches, then per block: accumulate each
unit's input Hessian with forward hooks, hand the units to the method, recompute the block's
outputs with the compressed weights and feed them to the next block. Units that read the
same input tensor (q/k/v, gate/up) share one Hessian. With ``sequential``, those input groups
are compressed one after another, each seeing the inputs produced by the already-compressed
groups before it (attention projections, then the output projection, then the MLP).
Memory holds one block's activations for the calibration set; the model is never copied.
The activations and statistics live on the placement's device; with offload, each block is moved
there for its turn and back to host memory after it (``pqorder.offload.resident``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from pqorder.errors import PqorderError
from pqorder.hardware import Placement
from pqorder.models.adapter import (
    decoder_blocks,
    in_features,
    input_signature,
    run_model,
    unit_inputs,
)
from pqorder.offload import resident
from pqorder.stats import HessianAccumulator, UnitStats


class _StopForward(Exception):
    """Raised by the capture hook once the inputs of every layer type are recorded."""


@dataclass
class BlockInputs:
    """Hidden states entering a block, per calibration batch, and the blocks' call kwargs."""

    hidden: list[Tensor]  # each (B, T, D), or (B, C, H, W) entering a CNN block
    kwargs: list[dict[str, Any]]  # block 0's, per batch
    # Blocks of another layer type than block 0 (Gemma3's sliding- vs full-attention layers
    # get other masks and rotary tables): their kwargs, per batch.
    typed: dict[nn.Module, list[dict[str, Any]]] = field(default_factory=dict)

    def kwargs_of(self, block: nn.Module) -> list[dict[str, Any]]:
        return self.typed.get(block, self.kwargs)

    def then(self, hidden: list[Tensor]) -> BlockInputs:
        """The inputs of the next block: ``hidden``, with the same call kwargs."""
        return replace(self, hidden=hidden)


def _by_layer_type(model: nn.Module, blocks: nn.ModuleList) -> dict[int, list[nn.Module]]:
    """The index of the first block of each layer type (``config.layer_types``) → the blocks
    of that type; {0: every block} when they are all called alike."""
    types = getattr(getattr(model, "config", None), "layer_types", None)
    if types is None or len(types) != len(blocks) or len(set(types)) == 1:
        return {0: list(blocks)}
    groups: dict[int, list[nn.Module]] = {}
    for layer_type, block in zip(types, blocks, strict=True):
        groups.setdefault(types.index(layer_type), []).append(block)
    return groups


@torch.no_grad()
def capture_block_inputs(model: nn.Module, tokens: Tensor, batch_size: int) -> BlockInputs:
    """Run the model up to block 0 for every calibration batch and keep what block 0 sees.

    ``tokens`` is a calibration set: token ids (n, T) or images (n, C, H, W). When layer types
    differ (sliding/full attention), the pass goes on to the first block of each type to
    record the kwargs it is called with.
    """
    _, blocks = decoder_blocks(model)
    firsts = _by_layer_type(model, blocks)
    kwargs: dict[int, list[dict[str, Any]]] = {i: [] for i in firsts}
    captured = BlockInputs([], kwargs[0])

    def hook(index: int, args: tuple, kw: dict) -> None:
        hidden = args[0] if args else kw.pop("hidden_states")
        if index == 0:
            captured.hidden.append(hidden.detach())
        kwargs[index].append(kw)
        if index == max(firsts):
            raise _StopForward

    handles = [
        blocks[i].register_forward_pre_hook(lambda _m, a, kw, i=i: hook(i, a, kw), with_kwargs=True)
        for i in firsts
    ]
    try:
        for start in range(0, tokens.shape[0], batch_size):
            with contextlib.suppress(_StopForward):
                run_model(model, tokens[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    captured.typed = {b: kwargs[i] for i, group in firsts.items() if i for b in group}
    return captured


def _block_output(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs, batches: int | None = None) -> list[Tensor]:
    pairs = list(zip(inputs.hidden, inputs.kwargs_of(block), strict=True))[:batches]
    return [_block_output(block(h, **kw)) for h, kw in pairs]


def input_groups(block: nn.Module, units: dict[str, nn.Module], inputs: BlockInputs) -> list:
    """Units grouped by the input they read (tensor and how it is unfolded), in the order the
    forward pass reaches them."""
    # Keyed by id(input); the tensor is kept alive in the value so its id cannot be reused.
    seen: dict[tuple, tuple[Tensor, list[str]]] = {}
    handles = []
    for name, module in units.items():

        def record(m: nn.Module, args: tuple, _out: Any, name: str = name) -> None:
            key = (id(args[0]), input_signature(m))
            _tensor, names = seen.setdefault(key, (args[0], []))
            if name not in names:
                names.append(name)

        handles.append(module.register_forward_hook(record))
    try:
        run_block(block, inputs, batches=1)
    finally:
        for h in handles:
            h.remove()
    return [names for _tensor, names in seen.values()]


@torch.no_grad()
def _collect(
    block: nn.Module, units: dict[str, nn.Module], groups: list[list[str]], inputs: BlockInputs
) -> dict[str, UnitStats]:
    """One pass over the calibration batches, accumulating one Hessian per input group."""
    accumulators = {}
    handles = []
    for group in groups:
        lead = units[group[0]]
        acc = HessianAccumulator(in_features(lead))
        accumulators[group[0]] = acc
        handles.append(
            lead.register_forward_hook(
                lambda m, a, _o, acc=acc: acc.add_batch(unit_inputs(m, a[0]))
            )
        )
    try:
        run_block(block, inputs)
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for group in groups:
        shared = accumulators[group[0]].finish(group[0])
        for name in group:
            stats[name] = replace(shared, name=name)
    return stats


def calibrated_units(
    model: nn.Module,
    units: dict[str, nn.Module],
    tokens: Tensor,
    batch_size: int = 8,
    sequential: bool = False,
    progress: bool = True,
    label: str = "",
    placement: Placement | None = None,
) -> Iterator[tuple[str, nn.Module, UnitStats]]:
    """Yield every unit with its calibration statistics, block by block.

    The consumer compresses each yielded unit before asking for the next; the walk relies on
    that: it recomputes a block's outputs (and, when ``sequential``, later groups' inputs)
    from the weights as the consumer left them. ``placement`` (default: CPU) says where the
    blocks run; the yielded units and their statistics are on its device.
    """
    placement = placement or Placement()
    path, blocks = decoder_blocks(model)
    inputs = capture_block_inputs(model, tokens, batch_size)
    for index in tqdm(
        range(len(blocks)), desc=label or "blocks", disable=not progress, leave=False
    ):
        block = blocks[index]
        prefix = f"{path}.{index}."
        block_units = {n: m for n, m in units.items() if n.startswith(prefix)}
        with resident(block, placement):
            groups = input_groups(block, block_units, inputs)
            rounds = [[g] for g in groups] if sequential else [groups]
            for round_groups in rounds:
                stats = _collect(block, block_units, round_groups, inputs)
                for group in round_groups:
                    for name in group:
                        yield name, block_units[name], stats[name]
            outputs = run_block(block, inputs)
        for out in outputs:
            if not torch.isfinite(out).all():
                raise PqorderError(f"NaN/Inf in the outputs of block {prefix[:-1]} during {label}")
        inputs = inputs.then(outputs)
