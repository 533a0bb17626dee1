"""Calibration sampler: n random windows of seqlen tokens, deterministic under a seed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pqorder.data.images import is_image_source, sample_images
from pqorder.data.sources import load_text, tokenize
from pqorder.errors import ConfigError


@dataclass(frozen=True)
class CalibrationSpec:
    """What a calibration set is made of; recorded with every run that uses one."""

    source: str = "austen:pride"
    n_samples: int = 128
    seqlen: int = 512
    seed: int = 0

    def validate(self, max_context: int | None = None) -> None:
        if self.n_samples < 1:
            raise ConfigError(
                f"calibration needs at least 1 sample, got n_samples={self.n_samples}"
            )
        if self.seqlen < 2:
            raise ConfigError(f"calibration seqlen must be at least 2, got {self.seqlen}")
        if max_context is not None and self.seqlen > max_context:
            raise ConfigError(
                f"calibration seqlen {self.seqlen} exceeds the model's context of {max_context}"
            )


def sample_calibration(spec: CalibrationSpec, tokenizer: object) -> Tensor:
    """(n_samples, seqlen) token ids drawn uniformly from the source's token stream, or
    (n_samples, C, H, W) distinct images of an image dataset's training split (seqlen unused)."""
    spec.validate()
    if is_image_source(spec.source):
        return sample_images(spec.source, spec.n_samples, spec.seed)
    ids = tokenize(tokenizer, load_text(spec.source).text)
    if ids.numel() <= spec.seqlen:
        raise ConfigError(
            f"calibration source '{spec.source}' has {ids.numel()} tokens, "
            f"fewer than seqlen={spec.seqlen}"
        )
    gen = torch.Generator().manual_seed(spec.seed)
    starts = torch.randint(0, ids.numel() - spec.seqlen, (spec.n_samples,), generator=gen)
    return torch.stack([ids[s : s + spec.seqlen] for s in starts.tolist()])
