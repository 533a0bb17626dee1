"""In-memory snapshots of a model's weights and composition state, to rerun orders.

A snapshot holds every parameter (model-level steps touch embeddings, norms and the head, not
only the compressible units) and the state; restoring sets the state, rebuilds the structure
from it (``transforms.sync``: removed blocks come back, hooks are reinstalled), then loads the
weights.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.errors import PqorderError
from pqorder.state import CompressionState
from pqorder.transforms import sync


@dataclass
class Snapshot:
    weights: dict[str, Tensor]
    state: CompressionState


def model_weights(lm: LoadedModel) -> dict[str, Tensor]:
    """An independent host-memory copy of every parameter and persistent buffer (tied ones
    copied apart), wherever the model runs."""
    return {k: v.detach().to("cpu", copy=True) for k, v in lm.model.state_dict().items()}


def put_state(lm: LoadedModel, state: CompressionState, keys: Iterable[str]) -> dict[str, Tensor]:
    """Put ``lm`` in ``state`` (structure and hooks); return its live tensors by name, which must
    be exactly ``keys`` (the tensors weights for this state are written into, in place)."""
    lm.state = copy.deepcopy(state)
    sync(lm)
    live = lm.model.state_dict()
    if set(live) != set(keys):
        odd = sorted(set(live) ^ set(keys))
        raise PqorderError(
            f"saved weights do not fit this model in its state ({len(odd)} tensors differ, "
            f"e.g. {odd[0]}): they were saved from another model"
        )
    return live


@torch.no_grad()
def assign(live: dict[str, Tensor], key: str, value: Tensor) -> None:
    """Copy ``value`` into the live tensor ``key`` (same shape; cast to its dtype and device)."""
    target = live[key]
    if target.shape != value.shape:
        raise PqorderError(f"{key}: saved shape {tuple(value.shape)}, model {tuple(target.shape)}")
    target.copy_(value)


def load_weights(lm: LoadedModel, state: CompressionState, weights: dict[str, Tensor]) -> None:
    """Put ``lm`` in ``state`` (structure and hooks) holding ``weights``."""
    live = put_state(lm, state, weights)
    for key, value in weights.items():
        assign(live, key, value)


def take_snapshot(lm: LoadedModel) -> Snapshot:
    return Snapshot(model_weights(lm), copy.deepcopy(lm.state))


def restore_snapshot(lm: LoadedModel, snap: Snapshot) -> None:
    """Put ``lm`` back exactly where the snapshot was taken."""
    load_weights(lm, snap.state, snap.weights)
