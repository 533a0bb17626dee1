"""A compressed model written compactly, as what differs from its dense reference.

A prefix-cache entry holds the model after some steps. Most of it is one of: on a quantization
grid (store the integer codes, bit-packed at 4 bits or fewer, one byte up to 8; of the kept
weights only when the unit is also pruned), pruned without a grid (store the kept values; the
mask is in the composition state), or untouched (store nothing: the study's dense reference
holds it, under its name in the dense structure, so blocks renumbered by a block removal still
match). Every encoded unit is decoded again and compared bit for bit with the tensor the model
holds before the encoding is accepted; a tensor that does not come back exactly (a weight off
its grid, scale · (code − zero) rounding differently from the quantizer) is stored raw, as is
everything else that changed (rotated weights, a head or norms a model-level step changed).
So decoding gives back exactly the tensors the model held.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from pqorder.bitpack import pack, unpack
from pqorder.core import LoadedModel
from pqorder.dense import DenseReference, read_tensor, same_bits
from pqorder.models.adapter import module_layout, unit_shape, weight_matrix
from pqorder.quantgrid import QuantGrid
from pqorder.snapshot import assign, put_state
from pqorder.state import CompressionState, UnitConstraint
from pqorder.transforms import runtime

RAW, CODES, KEPT, DENSE = "raw", "codes", "kept", "dense"  # how a model tensor is stored
Manifest = dict[str, tuple[str, str]]  # model tensor -> (how, name in the entry or dense model)


def encode(lm: LoadedModel, dense: DenseReference) -> tuple[dict[str, Tensor], Manifest]:
    """The tensors to store for ``lm`` (by name in the file) and how to rebuild each tensor."""
    held = lm.model.state_dict()
    tensors: dict[str, Tensor] = {}
    manifest: Manifest = {}
    for unit, constraint in lm.state.units.items():
        key = f"{unit}.weight"
        if key in held and (constraint.grid is not None or constraint.mask is not None):
            module = lm.model.get_submodule(unit)
            encoded = _encode_unit(module, held[key].detach().cpu(), constraint)
            if encoded is not None:
                how, data = encoded
                tensors[f"{how}:{key}"] = data
                manifest[key] = (how, f"{how}:{key}")
    names = dense_names(lm, dense)
    rest = {names[k]: k for k in held if k not in manifest and names[k] in dense.keys}
    for name, ref in dense.tensors(rest):
        if same_bits(held[rest[name]], ref):
            manifest[rest[name]] = (DENSE, name)
    stored: set[tuple] = set()
    for key, t in held.items():
        if key not in manifest:
            t = t.detach().cpu()
            where = (t.data_ptr(), t.shape, t.stride())
            tensors[f"{RAW}:{key}"] = t.clone() if where in stored else t.contiguous()
            stored.add(where)
            manifest[key] = (RAW, f"{RAW}:{key}")
    return tensors, manifest


def decode(
    lm: LoadedModel,
    state: CompressionState,
    path: str,
    manifest: Manifest,
    dense: DenseReference,
) -> None:
    """Put ``lm`` in ``state`` holding exactly the tensors ``encode`` described."""
    live = put_state(lm, state, manifest)
    from_dense: dict[str, list[str]] = {}
    for key, (how, name) in manifest.items():
        if how == DENSE:
            from_dense.setdefault(name, []).append(key)
            continue
        data = read_tensor(path, name)
        if how != RAW:
            unit = key.removesuffix(".weight")
            module = lm.model.get_submodule(unit)
            data = _rebuild(module, how, data, state.get(unit), live[key].dtype)
        assign(live, key, data)
    for name, value in dense.tensors(from_dense):
        for key in from_dense[name]:
            assign(live, key, value)


def manifest_text(manifest: Manifest) -> str:
    return json.dumps(manifest)


def manifest_from_text(text: str) -> Manifest:
    return {key: (how, name) for key, (how, name) in json.loads(text).items()}


def dense_names(lm: LoadedModel, dense: DenseReference) -> dict[str, str]:
    """The name each tensor of ``lm`` has in the dense structure (blocks removed by a later step
    renumber the ones after them; a block keeps its module object, so it is found by identity)."""
    rt = runtime(lm)
    parent_path, _, attr = rt.path.rpartition(".")
    parent = lm.model.get_submodule(parent_path) if parent_path else lm.model
    removed = set(dense.state.model.removed_blocks)
    dense_order = [i for i in range(len(rt.blocks)) if i not in removed]
    position = {}
    for now, block in enumerate(getattr(parent, attr)):
        original = next(i for i, b in enumerate(rt.blocks) if b is block)
        if original in dense_order:
            position[f"{rt.path}.{now}."] = f"{rt.path}.{dense_order.index(original)}."
    names = {}
    for key in lm.model.state_dict():
        prefix = f"{rt.path}.{key.removeprefix(rt.path + '.').split('.', 1)[0]}."
        names[key] = position[prefix] + key[len(prefix) :] if prefix in position else key
    return names


def _encode_unit(
    module: nn.Module, held: Tensor, constraint: UnitConstraint
) -> tuple[str, Tensor] | None:
    """Codes or kept values of a constrained unit's weight, if they rebuild it bit for bit."""
    w = weight_matrix(module, held)  # (out, in) float32
    mask = None if constraint.mask is None else constraint.mask.cpu()
    grid = constraint.grid
    if grid is not None:
        if grid.bits > 8:
            return None
        codes = _cpu(grid).codes(w)
        codes = codes[mask] if mask is not None else codes.reshape(-1)
        how, data = CODES, pack(codes, grid.bits) if grid.bits <= 4 else codes.to(torch.uint8)
    else:
        how, data = KEPT, w[mask].to(held.dtype)
    back = _rebuild(module, how, data, constraint, held.dtype)
    return (how, data) if same_bits(back, held) else None


def _rebuild(
    module: nn.Module, how: str, data: Tensor, constraint: UnitConstraint, dtype: torch.dtype
) -> Tensor:
    """The unit's weight, in its own layout and dtype, from its codes or kept values."""
    out, inp = unit_shape(module)
    mask = None if constraint.mask is None else constraint.mask.cpu()
    if how == KEPT:
        w = torch.zeros(out, inp, dtype=data.dtype)
        w[mask] = data
    else:
        grid = _cpu(constraint.grid)
        count = out * inp if mask is None else int(mask.sum())
        codes = unpack(data, grid.bits, count) if grid.bits <= 4 else data
        scale, zero = grid.expand(grid.scale, inp), grid.expand(grid.zero, inp)
        if mask is None:
            q = codes.reshape(out, inp).to(zero.dtype)
        else:
            q = zero.clone()  # a pruned weight's code is the zero point: it decodes to 0
            q[mask] = codes.to(zero.dtype)
        w = scale * (q - zero)  # the quantizer's own formula, so the same float rounding
    return module_layout(module, w).to(dtype)


def _cpu(grid: QuantGrid) -> QuantGrid:
    return QuantGrid(grid.bits, grid.group_size, grid.scale.cpu(), grid.zero.cpu())
