"""SLEB (Song et al., 2024): remove whole decoder blocks, greedily, by calibration perplexity.

Each round removes the block whose absence raises the calibration perplexity least, then
re-scores the remaining blocks on the shortened model. The first ``keep_first`` and last
``keep_last`` blocks are barriers that are never removed. Block inputs are cached per position
for the current model, so scoring candidate j runs only the blocks after j; after a removal only
the inputs downstream of it are recomputed. Greedy orders are prefix-consistent, so a run that
removed more blocks from the same model and calibration answers smaller counts without work.

Each candidate costs a forward pass of the blocks after it plus the LM head over the
calibration tokens; ``samples`` caps how many calibration samples are scored (the paper uses
128 × 2048 tokens on a GPU; on a CPU a few thousand tokens keep a 30-block model in minutes).

Removed blocks leave the module list (``config.num_hidden_layers`` follows) and are recorded
in ``state.model.removed_blocks`` by their original index; unit names of later blocks shift.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import torch
from pydantic import model_validator
from torch import Tensor, nn
from tqdm.auto import tqdm

from pqorder.core import LoadedModel, ModelOutcome, Need, Runtime, StepContext
from pqorder.errors import ConfigError
from pqorder.layerwise import capture_block_inputs, run_block
from pqorder.methods.base import Method, MethodConfig, ModelMethod, register
from pqorder.models.adapter import decoder_blocks
from pqorder.models.architecture import Capability, final_layers
from pqorder.state import UnitConstraint
from pqorder.transforms import runtime, sync


class SLEBConfig(MethodConfig):
    """``ratio`` of the original blocks, or ``blocks`` to remove; barrier blocks at each end."""

    ratio: float | None = None
    blocks: int | None = None
    keep_first: int = 1
    keep_last: int = 1
    samples: int | None = None  # score on the first n calibration samples (None = all)
    batch_size: int = 8

    @model_validator(mode="after")
    def _one_amount(self) -> SLEBConfig:
        if (self.ratio is None) == (self.blocks is None):
            raise ValueError("give exactly one of ratio or blocks")
        if self.ratio is not None and not 0 < self.ratio < 1:
            raise ValueError(f"ratio must be in (0, 1), got {self.ratio}")
        if self.blocks is not None and self.blocks < 1:
            raise ValueError(f"blocks must be at least 1, got {self.blocks}")
        if self.keep_first < 0 or self.keep_last < 0:
            raise ValueError("keep_first and keep_last must be 0 or more")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"samples must be at least 1, got {self.samples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        return self


class _Scorer:
    """Calibration NLL of the model with one block skipped, from cached block inputs."""

    def __init__(self, model: nn.Module, tokens: Tensor, batch_size: int) -> None:
        self.model, self.tokens, self.batch_size = model, tokens, batch_size
        self.final, self.head = final_layers(model), model.get_output_embeddings()
        _, blocks = decoder_blocks(model)
        self.blocks = list(blocks)
        self.inputs = [capture_block_inputs(model, tokens, batch_size)]
        self._refresh(0)

    def _refresh(self, start: int) -> None:
        """Recompute the cached inputs of every block after position ``start``."""
        del self.inputs[start + 1 :]
        for block in self.blocks[start:]:
            prev = self.inputs[-1]
            self.inputs.append(prev.then(run_block(block, prev)))

    def nll_without(self, j: int) -> float:
        hidden = self.inputs[j]
        for block in self.blocks[j + 1 :]:
            hidden = hidden.then(run_block(block, hidden))
        total, count = 0.0, 0
        for h, start in zip(
            hidden.hidden, range(0, len(self.tokens), self.batch_size), strict=True
        ):
            ids = self.tokens[start : start + self.batch_size].to(h.device)
            logits = self.head(self.final(h)).float()
            total += nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]),
                ids[:, 1:].reshape(-1),
                reduction="sum",
            ).item()
            count += ids[:, 1:].numel()
        return total / count

    def remove(self, j: int) -> None:
        del self.blocks[j]
        self._refresh(j)


def _fingerprint(model: nn.Module, tokens: Tensor, cfg: SLEBConfig) -> str:
    digest = hashlib.sha256(tokens.numpy().tobytes())
    digest.update(f"{cfg.keep_first},{cfg.keep_last}".encode())
    for name, p in model.named_parameters():
        digest.update(f"{name}:{p.double().sum().item():.10e}:{p.abs().sum().item():.10e}".encode())
    return digest.hexdigest()


@torch.no_grad()
def greedy_removal(
    rt: Runtime, model: nn.Module, tokens: Tensor, count: int, cfg: SLEBConfig, progress: bool
) -> tuple[list[int], list[float]]:
    """Blocks removed round by round (indices in the model as given), and the calibration
    perplexity after each round.

    The greedy rounds, (block removed, calibration perplexity after), are memoized in the
    model's runtime under a fingerprint of its weights and the samples, so a later request
    for more blocks continues them and one for fewer costs nothing.
    """
    key = f"sleb:{_fingerprint(model, tokens, cfg)}"
    memo: list[tuple[int, float]] = rt.memo.get(key, [])  # type: ignore[assignment]
    rounds = list(memo)
    if len(rounds) < count:
        scorer = _Scorer(model, tokens, cfg.batch_size)
        original = list(range(len(scorer.blocks)))
        for block, _ in rounds:  # continue a shorter greedy run instead of repeating it
            scorer.remove(original.index(block))
            original.remove(block)
        for _ in tqdm(range(count - len(rounds)), desc="sleb", disable=not progress, leave=False):
            n = len(scorer.blocks)
            scores = {j: scorer.nll_without(j) for j in range(cfg.keep_first, n - cfg.keep_last)}
            best = min(scores, key=scores.get)
            rounds.append((original.pop(best), math.exp(scores[best])))
            scorer.remove(best)
        rt.memo[key] = rounds
    return [b for b, _ in rounds[:count]], [p for _, p in rounds[:count]]


@register
class SLEB(ModelMethod):
    name = "sleb"
    family = "prune"
    granularities = "decoder block"
    summary = "SLEB: greedily remove whole blocks by calibration perplexity (first/last kept)"
    Config = SLEBConfig
    example = "sleb:blocks=1,keep_first=0,samples=2"
    kinds = frozenset({"causal-lm"})  # decoders of a declared family (checked in detail)
    requires = Need.INPUTS  # scores blocks on the samples itself
    constrains_weights = False
    keeps_units = False

    @property
    def granularity(self) -> str:
        return "block"

    @property
    def capabilities(self) -> frozenset[Capability]:
        return frozenset({"sleb"})

    def count(self, n_original: int) -> int:
        cfg = self.config
        return cfg.blocks if cfg.blocks is not None else round(cfg.ratio * n_original)

    def check_composition(self, lm: LoadedModel, earlier: Sequence[Method]) -> None:
        t = lm.state.model
        n_original = len(runtime(lm).blocks)
        gone = len(t.removed_blocks) + sum(
            m.count(n_original) for m in earlier if isinstance(m, SLEB)
        )
        want = self.count(n_original)
        barriers = self.config.keep_first + self.config.keep_last
        free = n_original - gone - max(barriers, 1)  # at least one block remains
        if want < 1:
            raise ConfigError(f"sleb: ratio {self.config.ratio} of {n_original} blocks is 0 blocks")
        if want > free:
            raise ConfigError(
                f"sleb: cannot remove {want} blocks: the model has {n_original - gone} "
                f"(of {n_original}; {gone} removed before), and keep_first="
                f"{self.config.keep_first}, keep_last={self.config.keep_last} must stay "
                f"(and at least one block)"
            )

    def apply(self, ctx: StepContext) -> ModelOutcome:
        lm = ctx.lm
        path, _ = decoder_blocks(lm.model)
        rt, t = runtime(lm), lm.state.model
        n_original = len(rt.blocks)
        tokens = ctx.calibration[: self.config.samples]
        positions, ppls = greedy_removal(
            rt, lm.model, tokens, self.count(n_original), self.config, ctx.progress
        )
        alive = [i for i in range(n_original) if i not in t.removed_blocks]
        removed = [alive[p] for p in positions]
        still = [i for i in alive if i not in removed]
        renamed: dict[str, UnitConstraint] = {}
        for name, constraint in lm.state.units.items():
            pos, rest = name.removeprefix(f"{path}.").split(".", 1)
            if alive[int(pos)] in still:
                renamed[f"{path}.{still.index(alive[int(pos)])}.{rest}"] = constraint
        lm.state.units = renamed
        t.n_blocks = n_original
        t.removed_blocks = sorted([*t.removed_blocks, *removed])
        sync(lm)
        details = {"removed_blocks": removed, "calibration_ppl": [round(p, 4) for p in ppls]}
        return ModelOutcome([], details)
