"""Pure mask selection shared by every pruner: prune the lowest scores within groups."""

from __future__ import annotations

import torch
from torch import Tensor

from pqorder.errors import ConfigError


def prune_lowest(scores: Tensor, kept: Tensor, k: int) -> Tensor:
    """Per row of (G, S) ``scores``, drop the ``k`` lowest; already-pruned entries go first.

    Returns the new keep mask (a subset of ``kept``). Ties break by position, so exactly ``k``
    entries per row are pruned whenever at most ``k`` were pruned before.
    """
    if k <= 0:
        return kept.clone()
    ranked = torch.where(
        kept, scores.float(), torch.full_like(scores, -torch.inf, dtype=torch.float)
    )
    drop = torch.topk(ranked, k, dim=1, largest=False, sorted=False).indices
    new = kept.clone()
    new.scatter_(1, drop, False)
    return new


def unstructured_mask(scores: Tensor, kept: Tensor, ratio: float, per_row: bool) -> Tensor:
    """Mask with ``floor(ratio * n)`` pruned per layer (or per output row when ``per_row``)."""
    if per_row:
        return prune_lowest(scores, kept, int(ratio * scores.shape[1]))
    flat = prune_lowest(scores.reshape(1, -1), kept.reshape(1, -1), int(ratio * scores.numel()))
    return flat.view_as(kept)


def nm_mask(scores: Tensor, kept: Tensor, n: int, m: int) -> Tensor:
    """Keep at most ``n`` of every ``m`` consecutive input weights of each row (N:M)."""
    out, inp = scores.shape
    if inp % m:
        raise ConfigError(f"N:M with M={m} does not divide the layer width {inp}")
    grouped = prune_lowest(scores.reshape(-1, m), kept.reshape(-1, m), m - n)  # (out*in/m, m)
    return grouped.view(out, inp)


def parse_nm(text: str) -> tuple[int, int]:
    """'2:4' → (2, 4): at most N nonzeros in every M consecutive weights, 0 < N < M."""
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise ValueError(f"N:M pattern must look like 2:4, got '{text}'") from None
    if not 0 < n < m:
        raise ValueError(f"N:M pattern needs 0 < N < M, got {n}:{m}")
    return n, m
