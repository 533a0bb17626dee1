"""Basis Sharing (Wang et al., 2024): adjacent blocks share one whitened-SVD basis per projection.

For the projections that read the residual stream (q/k/v and gate/up: ``Architecture.qkv``
and ``mlp_in``), each run of ``group`` adjacent blocks shares one basis. In nn.Linear terms a
weight is (out, in) and the layer computes x·Wᵀ; the g weights of a group are stacked along the
output dimension, W = [W₁; …; W_g] (g·out, in), so they read the input through one basis.
Whitening: with H = Σᵢ XᵢᵀXᵢ the calibration inputs' Gram summed over the group (damped by
``damp``·mean diag) and L its Cholesky factor (H = L·Lᵀ), ‖X(W − Ŵ)ᵀ‖_F = ‖(W − Ŵ)L‖_F, so the
best rank-k Ŵ in that norm comes from the SVD W·L = U·S·Vᵀ: Ŵ = U_k·S_k·V_kᵀ·L⁻¹. The shared
basis is B = S_k^½·V_kᵀ·L⁻¹ (k, in); layer i's coefficients are its rows of U_k·S_k^½
(out, k), so W_i ≈ C_i·B (the singular values are split evenly so that neither factor carries
the whole dynamic range, which suits a later quantizer). The output projections (o, down) get
the same whitened SVD per layer. With ``refit``, each layer's coefficients of a shared basis
are refit in closed form on that layer's own inputs: C_i = W_i·H_i·Bᵀ·(B·H_i·Bᵀ)⁻¹, the least
squares solution of min ‖X_i·(W_i − C_i·B)ᵀ‖ (the shared basis was fit to the group's summed
Gram; per-layer factors are already optimal).

Rank from ``ratio`` (the fraction of the projections' parameters removed): g stacked (out, in)
weights hold g·out·in parameters, the factors k·in (the basis, counted once) + g·out·k, so
k = ⌊(1 − ratio)·g·out·in / (in + g·out)⌋; a per-layer factor is the case g = 1. The last
group is shorter when the block count is not a multiple of ``group``. A ratio giving k < 1 is
refused before work (k ≥ min(in, g·out), which would remove nothing, cannot occur for
ratio > 0).

Statistics come from the engine's layer-wise walk: a group is factored once the walk has
passed all its blocks, so every group sees the outputs of the already-factored groups before
it, and the blocks inside a group see each other dense (as in the paper, which whitens with the
inputs of the original model).

Composition: the factors are ordinary units (``<unit>.basis``, ``<unit>.coef``; a shared basis
is one module, listed and compressed once, under the group's first block), so pruning and
quantization after sharing act on the factor matrices and keep their masks and grids; pruning
a factor zeroes entries of the basis or coefficient matrix, at the pruner's ratio of that factor.
Sharing after pruning or quantization approximates the compressed weights: the replaced units'
masks and grids end with them (a warning in the step record says so). Steps that edit named
projections (rotation, structured pruning, block removal) are refused after sharing.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from pydantic import field_validator
from torch import Tensor, nn

from pqorder.core import LoadedModel, ModelOutcome, Need, StepContext
from pqorder.errors import ConfigError
from pqorder.factors import FactoredLinear, factored
from pqorder.layerwise import calibrated_units
from pqorder.methods.base import Method, MethodConfig, ModelMethod, OpenFraction, register
from pqorder.methods.sleb import SLEB
from pqorder.models.adapter import decoder_blocks, get_weight
from pqorder.models.architecture import Architecture, Capability, architecture
from pqorder.state import Factoring
from pqorder.stats import UnitStats
from pqorder.transforms import runtime, sync


class ShareConfig(MethodConfig):
    """``ratio`` of the projections' parameters removed, ``group`` blocks per shared basis,
    ``refit`` per-layer coefficients, ``damp`` of the whitening Gram."""

    ratio: OpenFraction = 0.2
    group: int = 2
    refit: bool = False
    damp: OpenFraction = 0.01
    always_show = ("ratio", "group")

    @field_validator("group")
    @classmethod
    def _group(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"group must be at least 1, got {v}")
        return v


def share_rank(ratio: float, out: int, inp: int, layers: int) -> int:
    """The rank that removes at least ``ratio`` of ``layers`` stacked (out, inp) weights' parameters
    when they share one basis (``layers`` = 1: a per-layer factorization)."""
    return math.floor((1 - ratio) * layers * out * inp / (inp + layers * out))


def _whitener(hessian: Tensor, damp: float) -> Tensor:
    """Lower Cholesky factor L of the damped Gram (float64): H + λI = L·Lᵀ."""
    h = hessian.double()
    mean = torch.diagonal(h).mean().item()
    h = h + (damp * mean if mean > 0 else 1.0) * torch.eye(len(h), dtype=h.dtype, device=h.device)
    return torch.linalg.cholesky(h)


def _top_singular(m: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """The ``rank`` leading singular triplets (U_k, S_k, V_kᵀ) of ``m`` (float64), from the
    eigendecomposition of the Gram of its shorter side (much faster than a full SVD here)."""
    tall = m.shape[0] >= m.shape[1]
    gram = m.t() @ m if tall else m @ m.t()
    values, vectors = torch.linalg.eigh(gram)  # ascending
    top = vectors[:, -rank:].flip(1)
    s = values[-rank:].flip(0).clamp(min=0).sqrt()
    safe = s.clamp(min=s[0].item() * 1e-12 if s[0] > 0 else 1e-30)
    if tall:
        return (m @ top) / safe, s, top.t()
    return top, s, ((m.t() @ top) / safe).t()


def shared_basis(
    weights: Sequence[Tensor], hessian: Tensor, rank: int, damp: float = 0.01
) -> tuple[Tensor, list[Tensor]]:
    """Basis (rank, in) and each weight's coefficients (out_i, rank) of the rank-``rank``
    whitened SVD of the stacked (out, in) ``weights`` under the input Gram ``hessian``."""
    stacked = torch.cat([w.double() for w in weights])
    lower = _whitener(hessian, damp)
    u, s, vh = _top_singular(stacked @ lower, rank)
    root = s.sqrt()
    basis = torch.linalg.solve_triangular(lower, vh, upper=False, left=False)
    coef = u * root
    sizes = [w.shape[0] for w in weights]
    return (root[:, None] * basis).float(), [c.float() for c in coef.split(sizes)]


def refit_coefficients(w: Tensor, basis: Tensor, hessian: Tensor, damp: float = 0.01) -> Tensor:
    """Least-squares coefficients C (out, rank) of ``w`` on a fixed ``basis`` under the layer's
    own input Gram: C = W·H·Bᵀ·(B·H·Bᵀ)⁻¹."""
    h = hessian.double()
    b = basis.double()
    gram = b @ h @ b.t()
    mean = torch.diagonal(gram).mean().item()
    gram = gram + damp * max(mean, 1e-12) * torch.eye(len(gram), dtype=h.dtype, device=h.device)
    rhs = w.double() @ h @ b.t()
    return torch.linalg.solve(gram, rhs.t()).t().float()


def whitened_error(w: Tensor, approx: Tensor, hessian: Tensor) -> float:
    """‖X(W − Ŵ)ᵀ‖_F / ‖XWᵀ‖_F from the Gram H ∝ XᵀX: the relative output error on the
    calibration inputs (tr(D·H·Dᵀ) for D = W − Ŵ)."""
    h, w = hessian.float(), w.float()
    d = w - approx.float()
    energy = ((w @ h) * w).sum().clamp(min=1e-30)
    return math.sqrt(((d @ h) * d).sum().clamp(min=0).item() / energy.item())


def _parts(arch: Architecture) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(shared: units reading the residual stream, per-layer: units writing it)."""
    return (*arch.qkv, *arch.mlp_in), (arch.attention_out, arch.mlp_out)


@register
class Share(ModelMethod):
    name = "share"
    family = "share"
    granularities = "projection type per group of adjacent blocks (basis), layer (coefficients)"
    summary = "Basis Sharing: adjacent blocks share a whitened-SVD basis; per-layer coefficients"
    Config = ShareConfig
    example = "share:ratio=0.2,group=2"
    kinds = frozenset({"causal-lm"})
    requires = Need.STATISTICS  # the whitening Grams of every projection's inputs
    constrains_weights = False  # the factors carry no mask or grid
    keeps_units = False  # each projection becomes two units, basis and coefficients
    factors = True

    @property
    def granularity(self) -> str:
        return "shared basis"

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({"share"})

    def groups(self, n_blocks: int) -> list[range]:
        g = self.config.group
        return [range(s, min(s + g, n_blocks)) for s in range(0, n_blocks, g)]

    def check_composition(self, lm: LoadedModel, earlier: Sequence[Method]) -> None:
        shared, own = _parts(architecture(lm.model))  # declared: the capability is checked
        _, blocks = decoder_blocks(lm.model)
        n_original = len(runtime(lm).blocks)
        n = len(blocks) - sum(m.count(n_original) for m in earlier if isinstance(m, SLEB))
        g = self.config.group
        if n < g:
            raise ConfigError(
                f"share: group={g} needs at least {g} blocks to share a basis; the model has {n}"
            )
        sizes = {len(r) for r in self.groups(n)}
        for part in (*shared, *own):
            module = blocks[0].get_submodule(part)  # factored by a run the study restores
            if not isinstance(module, nn.Linear | FactoredLinear):
                raise ConfigError(
                    f"share factors nn.Linear projections; {part} is a {type(module).__name__}"
                )
            for layers in sizes if part in shared else {1}:
                out, inp = module.out_features, module.in_features
                k = share_rank(self.config.ratio, out, inp, layers)
                if k < 1:
                    raise ConfigError(
                        f"share: ratio {self.config.ratio:g} leaves rank {k} for {part} "
                        f"({layers} × ({out}, {inp})): lower the ratio"
                    )

    def _factor_group(
        self,
        lm: LoadedModel,
        path: str,
        blocks: nn.ModuleList,
        members: range,
        stats: dict[str, UnitStats],
        ranks: dict[str, int],
    ) -> list[float]:
        """Replace the group's projections with factors; the whitened errors per unit."""
        cfg = self.config
        shared, own = _parts(architecture(lm.model))
        errors = []
        device = lm.placement.device
        for part in (*shared, *own):
            layers = list(members) if part in shared else None
            for positions in [layers] if layers else [[i] for i in members]:
                names = [f"{path}.{i}.{part}" for i in positions]
                modules = [blocks[i].get_submodule(part) for i in positions]
                ws = [get_weight(m).to(device) for m in modules]
                hs = [stats[n].hessian.to(device) for n in names]
                k = share_rank(cfg.ratio, ws[0].shape[0], ws[0].shape[1], len(ws))
                basis, coefs = shared_basis(ws, sum(hs), k, cfg.damp)
                if cfg.refit and len(ws) > 1:
                    coefs = [
                        refit_coefficients(w, basis, h, cfg.damp)
                        for w, h in zip(ws, hs, strict=True)
                    ]
                first = factored(modules[0], k)
                for name, module, w, h, c in zip(names, modules, ws, hs, coefs, strict=True):
                    unit = first if module is modules[0] else factored(module, k, first.basis)
                    unit.basis.weight.copy_(basis.to(unit.basis.weight))
                    unit.coef.weight.copy_(c.to(unit.coef.weight))
                    if module.bias is not None:
                        unit.coef.bias.copy_(module.bias)
                    errors.append(whitened_error(w, c @ basis, h))
                    blocks[int(name.removeprefix(f"{path}.").split(".")[0])].set_submodule(
                        part, unit
                    )
                    ranks[name] = k
        return errors

    @torch.no_grad()
    def apply(self, ctx: StepContext) -> ModelOutcome:
        lm = ctx.lm
        arch = architecture(lm.model)
        shared, own = _parts(arch)
        path, blocks = decoder_blocks(lm.model)
        parts = (*shared, *own)
        units = {f"{path}.{i}.{p}": b.get_submodule(p) for i, b in enumerate(blocks) for p in parts}
        dense_params = sum(m.weight.numel() for m in units.values())
        constrained = [n for n in units if lm.state.get(n).mask is not None or lm.state.get(n).grid]
        for name in units:
            lm.state.units.pop(name, None)
        if constrained:
            warnings.warn(
                f"share replaced {len(constrained)} pruned or quantized units: the factors "
                "approximate the compressed weights, and their masks and grids end",
                stacklevel=2,
            )
        groups = self.groups(len(blocks))
        ranks: dict[str, int] = {}
        errors: list[float] = []
        pending: dict[str, UnitStats] = {}
        walk = calibrated_units(
            lm.model,
            units,
            ctx.calibration,
            sequential=False,
            progress=ctx.progress,
            label=self.name,
            placement=lm.placement,
        )
        group_index = 0
        for name, _module, stats in walk:
            pending[name] = stats
            members = groups[group_index]
            if len(pending) == len(members) * len(parts):
                errors += self._factor_group(lm, path, blocks, members, pending, ranks)
                lm.state.model.factoring = Factoring(self.config.group, list(shared), dict(ranks))
                sync(lm)  # hooks (online rotation, activation quantization) on the new modules
                pending, group_index = {}, group_index + 1
        factors = {
            id(m): m
            for n in ranks
            for m in lm.model.get_submodule(n).children()  # basis and coef
        }
        after = sum(m.weight.numel() for m in factors.values())
        touched = sorted(f"{n}.{part}" for n in ranks for part in ("basis", "coef"))
        details = {
            "ranks": {
                p: sorted({k for n, k in ranks.items() if n.endswith(f".{p}")}) for p in parts
            },
            "params_before": dense_params,
            "params_after": after,
            "removed": round(1 - after / dense_params, 6),
            "whitened_error": round(sum(errors) / len(errors), 6),
        }
        return ModelOutcome(touched, details)
