"""Model-level composition state made real: blocks, tied weights and forward hooks follow it.

``lm.state.model`` (``ModelTransforms``) says which blocks are removed, whether the residual
stream is rotated, what the forward pass fake-quantizes, and which units are factored
(``pqorder.factors``). ``sync`` rebuilds the module tree
and hooks from it, from any starting point, so restoring a snapshot or a cached prefix is
"set the state, sync, load the weights". Nothing else installs hooks or edits the block list.

Forward-pass transforms (they cannot be fused into weights):
- online Hadamard on the MLP down-projection input (its weight holds the inverse);
- on queries and keys after RoPE (attention scores are unchanged), so the K cache is rotated;
- fake quantization of every unit's input per token, and of K/V per token and head where
  attention reads them (equivalent to a quantized KV cache for evaluation);
- unmerged LoRA adapters (``pqorder.adapters``): PEFT layers around their units, installed
  before the hooks, so the online Hadamard of a down-projection (on the wrapper) reaches both
  the unit and its adapter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from pqorder.adapters import set_adapters, unwrapped
from pqorder.core import LoadedModel, Runtime
from pqorder.errors import PqorderError
from pqorder.factors import set_factors
from pqorder.fakequant import fake_quant
from pqorder.hadamard import random_rotation
from pqorder.models.adapter import compressible_units, decoder_blocks, in_features
from pqorder.models.architecture import architecture, attention_layout
from pqorder.state import ActivationQuant, Rotation

ATTENTION = "pqorder"


class PlacedMatrix:
    """A float32 matrix applied in every forward pass, cast once per device and dtype it meets
    (not on each call: on a GPU in half precision that would copy it per layer per batch)."""

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix
        self._copies: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def like(self, x: Tensor) -> Tensor:
        key = (x.device, x.dtype)
        if key not in self._copies:
            self._copies[key] = self.matrix.to(x)
        return self._copies[key]


@dataclass
class AttentionTransform:
    """Per-attention-module settings read by the ``pqorder`` attention function."""

    rotation: PlacedMatrix | None  # (head_dim, head_dim) applied to queries and keys
    quant: ActivationQuant | None


def _attention(
    module: nn.Module, query: Tensor, key: Tensor, value: Tensor, *args: object, **kwargs: object
) -> tuple[Tensor, Tensor | None]:
    transform: AttentionTransform | None = getattr(module, "pqorder_attention", None)
    if transform is not None:
        if transform.rotation is not None:
            r = transform.rotation.like(query)
            query, key = query @ r, key @ r
        q = transform.quant
        if q is not None and q.kv_bits is not None:
            key = fake_quant(key, q.kv_bits, q.kv_clip, sym=False)
            value = fake_quant(value, q.kv_bits, q.kv_clip, sym=False)
    return sdpa_attention_forward(module, query, key, value, *args, **kwargs)


def _register_attention() -> None:
    """Make the ``pqorder`` attention function known to transformers (idempotent; done when a
    model first needs it, not at import)."""
    AttentionInterface.register(ATTENTION, _attention)
    AttentionMaskInterface.register(ATTENTION, sdpa_mask)


@functools.lru_cache(maxsize=16)
def online_rotation(n: int, kind: str, seed: int) -> Tensor:
    """The (n, n) float32 orthogonal matrix of an online rotation (same one fused and online)."""
    return random_rotation(n, seed + n, kind).float()


def runtime(lm: LoadedModel) -> Runtime:
    """The model's Runtime, created on first use from the model as loaded."""
    if lm.runtime is None:
        model = lm.model
        path, blocks = decoder_blocks(model)
        transforms = lm.state.model
        full: list[nn.Module | None] = list(blocks)
        if transforms.n_blocks is not None and transforms.n_blocks != len(full):
            kept = iter(full)
            full = [
                None if i in transforms.removed_blocks else next(kept)
                for i in range(transforms.n_blocks)
            ]
        config = getattr(model, "config", None)  # None for plain torch models (vision)
        out = model.get_output_embeddings() if config is not None else None
        lm.runtime = Runtime(
            path=path,
            blocks=full,
            tied=out is not None and out.weight is model.get_input_embeddings().weight,
            attention=getattr(config, "_attn_implementation", None),
            layer_types=getattr(config, "layer_types", None),
        )
    return lm.runtime


def _set_blocks(lm: LoadedModel, rt: Runtime, removed: list[int]) -> None:
    blocks = [b for i, b in enumerate(rt.blocks) if i not in removed]
    parent_path, _, attr = rt.path.rpartition(".")
    parent = lm.model.get_submodule(parent_path) if parent_path else lm.model
    current = list(getattr(parent, attr))
    if len(current) == len(blocks) and all(a is b for a, b in zip(current, blocks, strict=True)):
        return  # already this structure
    if any(b is None for b in blocks):
        raise PqorderError("this checkpoint was saved without some blocks; they cannot return")
    setattr(parent, attr, nn.ModuleList(blocks))
    config = lm.model.config
    config.num_hidden_layers = len(blocks)
    if rt.layer_types is not None and len(rt.layer_types) == len(rt.blocks):
        config.layer_types = [t for i, t in enumerate(rt.layer_types) if i not in removed]
    arch = architecture(lm.model)
    for index, block in enumerate(blocks):
        attn = block.get_submodule(arch.attention) if arch.attention else None
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = index  # KV caches index layers by position


def _set_tied(lm: LoadedModel, rt: Runtime, untie: bool) -> None:
    """A rotated model needs its own lm_head (it absorbs the final norm)."""
    if not rt.tied:  # also every plain torch model (no embeddings to tie)
        return
    model = lm.model
    out, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if untie and out.weight is emb.weight:
        out.weight = nn.Parameter(emb.weight.detach().clone())
    elif not untie and out.weight is not emb.weight:
        out.weight = emb.weight
    model.config.tie_word_embeddings = not untie


PreHook = Callable[[nn.Module, tuple[Tensor, ...]], tuple[Tensor, ...]]


def _pre_hook(fn: Callable[[Tensor], Tensor]) -> PreHook:
    def hook(_module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (fn(args[0]), *args[1:])

    return hook


def quantize_input(x: Tensor, module: nn.Module, act: ActivationQuant) -> Tensor:
    """A unit's input on the activation grid: one range per token (per pixel across the input
    channels of a Conv2d) or one for the whole tensor."""
    if act.per == "tensor":
        return fake_quant(x.reshape(1, -1), act.bits, act.clip, act.sym).view_as(x)
    if isinstance(module, nn.Conv2d):
        return fake_quant(x.movedim(1, -1), act.bits, act.clip, act.sym).movedim(-1, 1)
    return fake_quant(x, act.bits, act.clip, act.sym)


def _install_hooks(
    lm: LoadedModel, rt: Runtime, rotation: Rotation | None, act: ActivationQuant | None
) -> None:
    model = lm.model
    arch = architecture(model)
    _, blocks = decoder_blocks(model)
    online = rotation is not None and rotation.online
    attentions = [b.get_submodule(arch.attention) for b in blocks] if arch.attention else []
    r = None
    if online:
        head_dim = attention_layout(model.config).head_dim
        r = PlacedMatrix(online_rotation(head_dim, rotation.kind, rotation.seed))
    needed = r is not None or (act is not None and act.kv_bits is not None)
    for attn in attentions:
        attn.pqorder_attention = AttentionTransform(r, act) if needed else None
    for down in [b.get_submodule(arch.mlp_out) for b in blocks] if online else []:
        h = PlacedMatrix(
            online_rotation(in_features(unwrapped(down)), rotation.kind, rotation.seed)
        )
        rt.handles.append(down.register_forward_pre_hook(_pre_hook(lambda x, h=h: x @ h.like(x))))
    if act is not None and act.bits is not None:
        for unit in compressible_units(model).values():
            quant = functools.partial(quantize_input, module=unit, act=act)
            rt.handles.append(unit.register_forward_pre_hook(_pre_hook(quant)))
    uses = any(getattr(attn, "pqorder_attention", None) for attn in attentions)
    if uses:
        _register_attention()
    if rt.attention is not None:
        model.config._attn_implementation = ATTENTION if uses else rt.attention


def sync(lm: LoadedModel) -> None:
    """Make ``lm.model``'s blocks, tied weights and hooks match ``lm.state.model``."""
    rt = runtime(lm)
    for handle in rt.handles:
        handle.remove()
    rt.handles.clear()
    transforms = lm.state.model
    _set_blocks(lm, rt, transforms.removed_blocks)
    set_factors(rt.path, decoder_blocks(lm.model)[1], transforms.factoring)
    _set_tied(lm, rt, untie=transforms.rotation is not None)
    set_adapters(lm.model, transforms.adapters)
    _install_hooks(lm, rt, transforms.rotation, transforms.activations)
