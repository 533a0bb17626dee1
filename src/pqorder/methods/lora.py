"""LoRA recovery (Hu et al., 2022, through PEFT) as a step of the order: train, then merge
without breaking what earlier steps established.

The step wraps the targeted units (default: every compressible unit, i.e. every decoder Linear
projection) in PEFT LoRA layers of ``rank`` and ``alpha`` and trains only the adapter factors
with the next-token loss for ``steps`` AdamW steps of ``batch`` windows of ``seqlen`` tokens.
The training text is ``data`` (a text source, e.g. ``austen:pride``: ``steps × batch`` random
windows under ``seed``) or, when unset, the pipeline's calibration samples cut into windows of
``seqlen`` and visited in a seeded random order. Everything is seeded (adapter initialization,
window order), so two runs on the CPU give the same weights bit for bit.

Merge policy (``merge=true``, the default): the update ΔW = (alpha/rank)·B·A is multiplied by
the unit's sparsity mask (pruned weights stay exactly zero), added to the weight, and the sum is
rounded onto the unit's existing quantization grid (same scales and zeros; ``UnitConstraint.
project``). Masks and grids are kept as they are, so a later step sees the constraints of the
earlier ones. The rounding throws away part of the update (on a 4-bit grid most of a small
update rounds back to the same grid point): the step record holds the training loss on the first
training window before training, after it (adapters unmerged), after the masked merge and after
the re-projection, and the share of weights that moved to another grid point, so this cost is
measured in every run. The masked merge alone costs nothing on a dense unit.

``merge=false`` keeps the adapters unmerged (PEFT layers, recorded in ``state.model.adapters``
so snapshots and cached prefixes restore them): the model is then no longer on its grids or
masks in effect (the adapter adds a dense low-rank term), so no step may follow it
(``OrderError``): a lora step with ``merge=false`` is the last step of a pipeline.

Training text and evaluation text must be disjoint: a study (and ``pqorder compress --eval``)
refuses a lora step whose ``data`` (or, unset, the calibration source) overlaps the evaluation
text (``check_held_out``), one line before any work; training on the evaluation text would turn
recovery into memorization of the test set, so it is refused rather than warned about.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence

import torch
from pydantic import field_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from pqorder.adapters import adapter_layers, adapter_parameters, check_peft, delta
from pqorder.core import LoadedModel, ModelOutcome, Need, StepContext
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.data.sources import load_text, overlaps
from pqorder.errors import ConfigError, PqorderError
from pqorder.methods.base import Method, MethodConfig, ModelMethod, register
from pqorder.models.adapter import compressible_units, get_weight, set_weight, weight_matrix
from pqorder.state import Adapters
from pqorder.transforms import sync

ALL = "all"  # every compressible unit


class LoRAConfig(MethodConfig):
    """``rank``, ``alpha`` (scaling alpha/rank), ``steps`` of ``batch`` × ``seqlen`` tokens at
    ``lr``; ``data`` a text source (unset: the calibration samples); ``targets`` unit names'
    last parts joined by ``+`` (``q_proj+v_proj``) or ``all``; ``merge`` into the weights."""

    rank: int = 8
    alpha: float = 16.0
    steps: int = 100
    lr: float = 2e-4
    data: str | None = None
    seqlen: int = 256
    batch: int = 4
    seed: int = 0
    targets: str = ALL
    merge: bool = True
    always_show = ("rank", "steps")

    @field_validator("rank", "steps", "batch")
    @classmethod
    def _positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"must be at least 1, got {v}")
        return v

    @field_validator("alpha", "lr")
    @classmethod
    def _positive_float(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(f"must be positive, got {v}")
        return v

    @field_validator("seqlen")
    @classmethod
    def _seqlen(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"must be at least 2 tokens (one prediction), got {v}")
        return v

    @field_validator("data")
    @classmethod
    def _data(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("no training data: give a text source (austen:pride) or leave it out")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: str) -> str:
        if not all(part.strip() for part in v.split("+")):
            raise ValueError(f"targets '{v}': give unit names like q_proj+v_proj, or all")
        return v


def targeted(names: Sequence[str], targets: str) -> list[str]:
    """The unit names ``targets`` selects (``all``, or names whose last parts match)."""
    if targets == ALL:
        return list(names)
    wanted = [t.strip() for t in targets.split("+")]
    return [n for n in names if any(n == t or n.endswith(f".{t}") for t in wanted)]


def _windows(ctx: StepContext, cfg: LoRAConfig) -> Tensor:
    """(n, length) training windows: from ``data``, or the calibration samples cut to seqlen."""
    if cfg.data is not None:
        spec = CalibrationSpec(cfg.data, cfg.steps * cfg.batch, cfg.seqlen, cfg.seed)
        return sample_calibration(spec, ctx.lm.tokenizer)
    samples = ctx.calibration
    size = min(cfg.seqlen, samples.shape[1])
    return samples[:, : samples.shape[1] // size * size].reshape(-1, size)


def _batches(n: int, batch: int, seed: int) -> Iterator[Tensor]:
    """Indices of ``batch`` windows per step: seeded shuffles of all ``n``, one after another."""
    gen = torch.Generator().manual_seed(seed)
    queue = torch.empty(0, dtype=torch.long)
    while True:
        while queue.numel() < batch:
            queue = torch.cat([queue, torch.randperm(n, generator=gen)])
        yield queue[:batch]
        queue = queue[batch:]


def _loss(model: nn.Module, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of the model on ``ids`` (the causal LM's own loss)."""
    return model(input_ids=ids, labels=ids, use_cache=False).loss


@torch.no_grad()
def _eval_loss(model: nn.Module, ids: Tensor) -> float:
    return _loss(model, ids).item()


def _train(
    model: nn.Module, windows: Tensor, cfg: LoRAConfig, device: torch.device, progress: bool
) -> list[float]:
    """AdamW on the adapter factors only (every other parameter frozen meanwhile, so no
    gradient is computed for it); the loss of every step."""
    params = adapter_parameters(model)
    ours = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in ours]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    order = _batches(len(windows), cfg.batch, cfg.seed)
    losses = []
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.enable_grad():
            for _ in tqdm(range(cfg.steps), desc="lora", disable=not progress, leave=False):
                loss = _loss(model, windows[next(order)].to(device))
                if not torch.isfinite(loss):
                    raise PqorderError(f"lora: the training loss became {loss.item()}; lower lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                losses.append(loss.item())
    finally:
        for p in frozen:
            p.requires_grad_(True)
        for p in params:
            p.grad = None
    return losses


def _merge(
    lm: LoadedModel, bases: dict[str, Tensor], deltas: dict[str, Tensor], project: bool
) -> dict[str, float]:
    """Write W + mask·ΔW into each unit (W from ``bases``), rounded onto its grid when
    ``project``; how much of the masked update survives (norm ratio) and the share of weights
    that moved."""
    device = lm.placement.device
    moved, total, kept_sq, masked_sq = 0, 0, 0.0, 0.0
    for name, d in deltas.items():
        constraint = lm.state.get(name).to(device)
        w = bases[name].to(device)
        masked = w + torch.where(constraint.kept(w), d.to(device), torch.zeros_like(w))
        new = constraint.project(masked) if project else masked
        set_weight(lm.model.get_submodule(name), new)
        moved += int((new != w).sum())
        total += w.numel()
        kept_sq += float(((new - w) ** 2).sum())
        masked_sq += float(((masked - w) ** 2).sum())
    return {
        "moved_weights": round(moved / max(total, 1), 6),
        "update_kept": round(math.sqrt(kept_sq / masked_sq), 6) if masked_sq > 0 else 1.0,
    }


@register
class LoRA(ModelMethod):
    name = "lora"
    family = "recover"
    granularities = "targeted units (low-rank update, masked and on the grid when merged)"
    summary = "LoRA recovery (PEFT): train adapters on text, merge within masks and grids"
    Config = LoRAConfig
    example = "lora:rank=2,steps=2,seqlen=16,batch=1"
    kinds = frozenset({"causal-lm"})  # the next-token loss

    @property
    def granularity(self) -> str:
        return f"rank-{self.config.rank} update"

    @property
    def needs(self) -> Need:
        return Need.INPUTS if self.config.data is None else Need.NOTHING

    def last_only(self) -> str | None:
        if self.config.merge:
            return None
        return (
            "lora with merge=false keeps its adapters unmerged (a dense low-rank term outside "
            "the masks and grids), so it must be the last step; use merge=true to go on"
        )

    def check_composition(self, lm: LoadedModel, earlier: Sequence[Method]) -> None:
        check_peft()
        if self.config.data is not None:
            load_text(self.config.data)  # an unknown or missing source is refused now
        if not targeted(list(compressible_units(lm.model)), self.config.targets):
            raise ConfigError(
                f"lora: targets '{self.config.targets}' match no unit of {lm.name} "
                "(give last parts of unit names, e.g. q_proj+v_proj, or all)"
            )

    def check_unit(self, name: str, shape: tuple[int, int]) -> None:
        rank = self.config.rank
        if targeted([name], self.config.targets) and rank >= min(shape):
            raise ConfigError(
                f"lora: rank {rank} is not below the width {min(shape)} of {name} "
                f"({shape[0]}×{shape[1]}): a low-rank update needs rank < min(out, in)"
            )

    def apply(self, ctx: StepContext) -> ModelOutcome:
        lm, cfg = ctx.lm, self.config
        device = lm.placement.device
        windows = _windows(ctx, cfg)
        names = targeted(list(compressible_units(lm.model)), cfg.targets)
        lm.state.model.adapters = Adapters(cfg.rank, cfg.alpha, tuple(names), cfg.seed)
        sync(lm)  # PEFT layers around the targeted units (seeded factors)
        probe = windows[:1].to(device)  # the first training window: the loss probes
        layers = adapter_layers(lm.model)
        trainable = sum(p.numel() for p in adapter_parameters(lm.model))
        loss_before = _eval_loss(lm.model, probe)
        start = time.perf_counter()
        torch.manual_seed(cfg.seed)
        curve = _train(lm.model, windows, cfg, device, ctx.progress)
        seconds = time.perf_counter() - start
        details = {
            "rank": cfg.rank,
            "alpha": cfg.alpha,
            "trainable_params": trainable,
            "windows": len(windows),
            "seqlen": windows.shape[1],
            "train_seconds": round(seconds, 3),
            "loss_curve": [round(v, 5) for v in curve],
            "probe_loss_before": round(loss_before, 5),
            "probe_loss_trained": round(_eval_loss(lm.model, probe), 5),
            "merged": cfg.merge,
        }
        if cfg.merge:
            deltas = {n: weight_matrix(w.get_base_layer(), delta(w)) for n, w in layers.items()}
            lm.state.model.adapters = None
            sync(lm)  # the units back in place, adapters dropped
            bases = {n: get_weight(lm.model.get_submodule(n)) for n in deltas}
            _merge(lm, bases, deltas, project=False)
            details["probe_loss_masked"] = round(_eval_loss(lm.model, probe), 5)
            details |= _merge(lm, bases, deltas, project=True)
            details["probe_loss_projected"] = round(_eval_loss(lm.model, probe), 5)
        return ModelOutcome(names, details)


def check_held_out(steps: Sequence[Method], evaluation: object, calibration: str | None) -> None:
    """Refuse a lora step whose training text overlaps the evaluation text (one line, before
    work). ``evaluation`` is the protocol (its ``dataset``, when it reads text), ``calibration``
    the calibration source a lora step without ``data`` trains on."""
    text = getattr(evaluation, "dataset", None)
    if not isinstance(text, str):
        return
    for step in steps:
        if isinstance(step, LoRA):
            source = step.config.data or calibration
            if source is not None and overlaps(source, text):
                what = "data" if step.config.data else "calibration text (its default data)"
                raise ConfigError(
                    f"lora trains on {source}, its {what}, which overlaps the evaluation text "
                    f"{text}: the held-out text must stay unseen (train on another source, e.g. "
                    "austen:pride, or a disjoint slice such as [0:0.5] vs [0.5:1])"
                )
