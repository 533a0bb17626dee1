"""Linear units held as two factors, a basis and per-layer coefficients, and built from state.

A factored unit computes ``coef(basis(x))``: ``basis`` maps the input (in) to the rank k and
``coef`` maps k to the output (out), carrying the original bias. Both are plain ``nn.Linear``
modules, so every unit-wise method (pruning, quantization) sees them as ordinary units named
``<unit>.basis`` and ``<unit>.coef``. A basis shared by a group of blocks is one module object
in each of them: the model's module walk lists it once, under the group's first block, so a
pruner or quantizer compresses it once and every layer of the group reads the result.

``set_factors`` makes the module tree match ``state.model.factoring`` from any starting point
(``transforms.sync`` calls it): units the state factors get factor modules of the recorded
ranks (weights to be loaded after, as for any restore), factored units the state does not
know go back to an empty ``nn.Linear`` of the original shape.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pqorder.state import Factoring


class FactoredLinear(nn.Module):
    """y = coef(basis(x)): a rank-``k`` stand-in for an (out, in) Linear."""

    def __init__(self, basis: nn.Linear, coef: nn.Linear) -> None:
        super().__init__()
        self.basis, self.coef = basis, coef
        self.in_features, self.out_features = basis.in_features, coef.out_features

    @property
    def rank(self) -> int:
        return self.basis.out_features

    def forward(self, x: Tensor) -> Tensor:
        return self.coef(self.basis(x))

    def dense(self) -> nn.Linear:
        """An empty Linear of the shape this unit stands for (its weights are loaded after)."""
        w = self.coef.weight
        lin = nn.Linear(
            self.in_features, self.out_features, self.coef.bias is not None, device="meta"
        )
        return lin.to_empty(device=w.device).to(w.dtype)


def _linear(inp: int, out: int, bias: bool, like: Tensor) -> nn.Linear:
    return nn.Linear(inp, out, bias, device="meta").to_empty(device=like.device).to(like.dtype)


def factored(dense: nn.Module, rank: int, basis: nn.Linear | None = None) -> FactoredLinear:
    """An (uninitialised) factored stand-in for ``dense`` (a Linear or factored unit) of
    ``rank``, reading through ``basis`` when given (a shared one)."""
    w = dense.coef.weight if isinstance(dense, FactoredLinear) else dense.weight
    bias = (dense.coef if isinstance(dense, FactoredLinear) else dense).bias is not None
    basis = basis if basis is not None else _linear(dense.in_features, rank, False, w)
    return FactoredLinear(basis, _linear(rank, dense.out_features, bias, w))


def factored_units(blocks: nn.ModuleList) -> dict[tuple[int, str], FactoredLinear]:
    """Every factored unit by (block position, block-relative name)."""
    return {
        (i, name): m
        for i, block in enumerate(blocks)
        for name, m in block.named_modules()
        if isinstance(m, FactoredLinear)
    }


@torch.no_grad()
def set_factors(path: str, blocks: nn.ModuleList, factoring: Factoring | None) -> None:
    """Make ``blocks`` (at model path ``path``) hold exactly the factors ``factoring`` records;
    modules already of the right rank and sharing are kept, with their weights."""
    now = factored_units(blocks)
    wanted: dict[tuple[int, str], int] = {}
    if factoring is not None:
        for name, rank in factoring.ranks.items():
            position, rel = name.removeprefix(f"{path}.").split(".", 1)
            wanted[(int(position), rel)] = rank
    for (i, rel), module in now.items():
        if (i, rel) not in wanted:
            blocks[i].set_submodule(rel, module.dense())
    bases: dict[tuple[int, str], nn.Linear] = {}  # (group, name) -> the shared basis
    seen: set[int] = set()  # bases already used by a unit
    for (i, rel), rank in sorted(wanted.items()):
        module = blocks[i].get_submodule(rel)
        key = (i // factoring.group, rel) if rel in factoring.shared else None
        shared = bases.get(key) if key is not None else None
        keep = isinstance(module, FactoredLinear) and module.rank == rank
        if keep and shared is not None:
            keep = module.basis is shared
        elif keep:
            keep = id(module.basis) not in seen
        if not keep:
            module = factored(module, rank, shared)
            blocks[i].set_submodule(rel, module)
        seen.add(id(module.basis))
        if key is not None:
            bases[key] = module.basis
