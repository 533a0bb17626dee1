"""In-memory snapshots of unit weights and constraints, to rerun orders from a shared prefix."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import Tensor

from pqorder.models.adapter import compressible_units, get_weight, set_weight
from pqorder.models.loading import LoadedModel
from pqorder.models.vision import load_norm_buffers, norm_buffers
from pqorder.state import CompressionState


@dataclass
class Snapshot:
    weights: dict[str, Tensor]
    state: CompressionState
    norms: dict[str, Tensor]  # BatchNorm running statistics (steps may re-estimate them)


def take_snapshot(lm: LoadedModel) -> Snapshot:
    """Copy every compressible unit's weight, BatchNorm statistics and the composition state."""
    weights = {name: get_weight(m) for name, m in compressible_units(lm.model).items()}
    return Snapshot(weights, copy.deepcopy(lm.state), norm_buffers(lm.model))


def restore_snapshot(lm: LoadedModel, snap: Snapshot) -> None:
    """Put ``lm`` back exactly where the snapshot was taken."""
    for name, module in compressible_units(lm.model).items():
        set_weight(module, snap.weights[name])
    load_norm_buffers(lm.model, snap.norms)
    lm.state = copy.deepcopy(snap.state)
