"""Perplexity with an explicit protocol.

join the source's text → tokenize once without special tokens → cap at ``max_tokens`` →
non-overlapping windows of ``seqlen`` (a trailing partial window is dropped) → exp of the
mean next-token NLL over every predicted token. Never compare numbers across seqlens.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from pqorder.data.sources import load_text, tokenize
from pqorder.errors import ConfigError
from pqorder.models.adapter import model_input


@dataclass(frozen=True)
class PerplexityProtocol:
    dataset: str = "austen:emma"
    seqlen: int = 512
    max_tokens: int | None = 8192
    batch_size: int = 4

    name: ClassVar[str] = "perplexity"
    lower_is_better: ClassVar[bool] = True

    def prepare(self, lm: object) -> None:
        """Load the text now: a missing dataset is an error, not a failed run."""
        load_text(self.dataset)

    def score(self, lm: object) -> float:
        return evaluate_perplexity(lm.model, lm.tokenizer, self, progress=False).perplexity

    def validate(self) -> None:
        if self.seqlen < 2:
            raise ConfigError(f"perplexity seqlen must be at least 2, got {self.seqlen}")
        if self.max_tokens is not None and self.max_tokens < self.seqlen:
            raise ConfigError(
                f"max_tokens={self.max_tokens} is below seqlen={self.seqlen}: no full window"
            )
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class PerplexityResult:
    perplexity: float
    nll: float
    tokens: int  # tokens fed to the model (windows × seqlen)
    windows: int
    protocol: PerplexityProtocol

    def to_dict(self) -> dict:
        return {**asdict(self), "protocol": asdict(self.protocol)}


@torch.no_grad()
def evaluate_perplexity(
    model: nn.Module, tokenizer: object, protocol: PerplexityProtocol, progress: bool = True
) -> PerplexityResult:
    """Perplexity of ``model`` on ``protocol.dataset`` under the protocol."""
    protocol.validate()
    ids = tokenize(tokenizer, load_text(protocol.dataset).text)
    if protocol.max_tokens is not None:
        ids = ids[: protocol.max_tokens]
    n_windows = ids.numel() // protocol.seqlen
    if n_windows == 0:
        raise ConfigError(
            f"'{protocol.dataset}' has {ids.numel()} tokens, fewer than seqlen={protocol.seqlen}"
        )
    windows = ids[: n_windows * protocol.seqlen].view(n_windows, protocol.seqlen)  # (W, T)
    total_nll, total_count = 0.0, 0
    model.eval()
    batches = range(0, n_windows, protocol.batch_size)
    for start in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
        batch = model_input(model, windows[start : start + protocol.batch_size])
        logits = model(input_ids=batch, use_cache=False).logits.float()  # (B, T, V)
        nll = nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1), reduction="sum"
        )
        total_nll += nll.item()
        total_count += batch[:, 1:].numel()
    mean_nll = total_nll / total_count
    return PerplexityResult(
        math.exp(mean_nll), mean_nll, n_windows * protocol.seqlen, n_windows, protocol
    )
