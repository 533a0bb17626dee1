"""In-memory snapshots of a model's weights and composition state, to rerun orders.

A snapshot holds every parameter (model-level steps touch embeddings, norms and the head, not
only the compressible units) and the state; restoring sets the state, rebuilds the structure
from it (``transforms.sync``: removed blocks come back, hooks are reinstalled), then loads the
weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor

from pqorder.core import LoadedModel
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


def load_weights(lm: LoadedModel, state: CompressionState, weights: dict[str, Tensor]) -> None:
    """Put ``lm`` in ``state`` (structure and hooks) holding ``weights``."""
    lm.state = copy.deepcopy(state)
    sync(lm)
    lm.model.load_state_dict(weights, strict=True)


def take_snapshot(lm: LoadedModel) -> Snapshot:
    return Snapshot(model_weights(lm), copy.deepcopy(lm.state))


def restore_snapshot(lm: LoadedModel, snap: Snapshot) -> None:
    """Put ``lm`` back exactly where the snapshot was taken."""
    load_weights(lm, snap.state, snap.weights)
