"""Composition state: the constraints earlier steps established, one home per unit.

Every step reads the constraint of a unit, compresses within it and writes back the
tighter constraint. Model-level steps record what they did to the whole model in
``ModelTransforms`` (removed blocks, the rotation, activation/KV quantization); the module tree
and forward hooks are rebuilt from it by ``pqorder.transforms.sync``.
``UnitConstraint.project`` is the single projection function: it puts a weight matrix back
on the unit's grid and zeroes its pruned entries, so any order of steps yields a model that
satisfies all of them. Masks are stored, never re-inferred from zeros.

A saved state names its format in the safetensors metadata; states saved before formats were
named are format 1 (the same layout), and any other format is refused with one line. Format 2
bit-packs the masks (one bit per weight, with the mask's shape beside it); format 1 stored one
byte per weight and still loads.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from pqorder.bitpack import pack, unpack
from pqorder.errors import check_format
from pqorder.quantgrid import QuantGrid

STATE_FILE = "pqorder_state.safetensors"
STATE_FORMAT = 2  # version of the layout CompressionState.save writes
MASK_BITS, MASK_SHAPE = ".mask_bits", ".mask_shape"  # a packed mask (format 2)


@dataclass
class UnitConstraint:
    """Sparsity mask (True = kept) and quantization grid of one compressible unit."""

    mask: Tensor | None = None
    grid: QuantGrid | None = None

    def project(self, w: Tensor) -> Tensor:
        """Put ``w`` on the grid, then zero the pruned weights (0 is always on the grid)."""
        if self.grid is not None:
            w = self.grid.project(w)
        if self.mask is not None:
            w = torch.where(self.mask, w, torch.zeros_like(w))
        return w

    def to(self, device: torch.device) -> UnitConstraint:
        """The same constraint with its tensors on ``device``."""
        mask = None if self.mask is None else self.mask.to(device)
        return UnitConstraint(mask, None if self.grid is None else self.grid.to(device))

    def kept(self, w: Tensor) -> Tensor:
        """Boolean mask of the weights still alive (all True when nothing is pruned)."""
        return self.mask if self.mask is not None else torch.ones_like(w, dtype=torch.bool)

    def sparsity(self) -> float:
        return 0.0 if self.mask is None else 1.0 - self.mask.float().mean().item()


@dataclass(frozen=True)
class Rotation:
    """A residual-stream rotation fused into the weights (QuaRot)."""

    kind: str  # "hadamard" or "orthogonal"
    seed: int
    online: bool  # online Hadamard on the MLP down-projection input and on queries/keys


@dataclass(frozen=True)
class ActivationQuant:
    """Fake quantization in the forward pass: inputs of every unit, per-token/head K/V."""

    bits: int | None  # activations entering every compressible unit; None = full precision
    clip: float
    kv_bits: int | None  # keys and values where attention reads them
    kv_clip: float
    per: str = "token"  # unit inputs: one range per token (a pixel for Conv2d) or per tensor
    sym: bool = True  # unit inputs: symmetric, or asymmetric min-max (post-ReLU inputs)


@dataclass(frozen=True)
class Adapters:
    """Unmerged LoRA adapters (PEFT layers around ``units``; their factors are model tensors)."""

    rank: int
    alpha: float
    units: tuple[str, ...]  # full unit names the adapters wrap
    seed: int  # initialization of fresh factors (training, or before a restore loads them)


@dataclass(frozen=True)
class Factoring:
    """Linear units replaced by a basis and a coefficient factor (parameter sharing).

    ``ranks`` holds the rank of every factored unit by its full module name (blocks as they are
    after any removal); units whose block-relative name is in ``shared`` use one basis module
    for each run of ``group`` adjacent blocks (0-1, 2-3, ...), the others have their own.
    """

    group: int
    shared: list[str]
    ranks: dict[str, int]


@dataclass
class ModelTransforms:
    """What model-level steps changed: blocks removed (original indices), rotation, fake quant,
    units factored into shared bases and per-layer coefficients."""

    n_blocks: int | None = None  # block count of the model before any removal
    removed_blocks: list[int] = field(default_factory=list)
    rotation: Rotation | None = None
    activations: ActivationQuant | None = None
    adapters: Adapters | None = None  # unmerged LoRA adapters (a lora step with merge=false)
    factoring: Factoring | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ModelTransforms:
        raw = json.loads(text)
        rot, act = raw.pop("rotation"), raw.pop("activations")
        ada = raw.pop("adapters", None)  # states saved before adapters existed have none
        factoring = raw.pop("factoring", None)  # absent in states saved before sharing existed
        return cls(
            **raw,
            rotation=Rotation(**rot) if rot else None,
            activations=ActivationQuant(**act) if act else None,
            adapters=Adapters(**{**ada, "units": tuple(ada["units"])}) if ada else None,
            factoring=Factoring(**factoring) if factoring else None,
        )


@dataclass
class CompressionState:
    """Constraints of every unit touched so far (keyed by module name) and model transforms."""

    units: dict[str, UnitConstraint] = field(default_factory=dict)
    model: ModelTransforms = field(default_factory=ModelTransforms)

    def get(self, name: str) -> UnitConstraint:
        return self.units.get(name, UnitConstraint())

    def set(self, name: str, constraint: UnitConstraint) -> None:
        self.units[name] = constraint

    def save(self, path: Path) -> None:
        """Masks and grids as tensors; model transforms and the format in the metadata."""
        tensors: dict[str, Tensor] = {}
        for name, c in self.units.items():
            if c.mask is not None:
                tensors[name + MASK_BITS] = pack(c.mask.cpu(), 1)
                tensors[name + MASK_SHAPE] = torch.tensor(c.mask.shape, dtype=torch.int64)
            if c.grid is not None:
                tensors.update(c.grid.to_tensors(f"{name}.grid"))
        meta = {"format": str(STATE_FORMAT), "model": self.model.to_json()}
        save_file(tensors, str(path), metadata=meta)

    @classmethod
    def load(cls, path: Path) -> CompressionState:
        """A state written by ``save`` (refused with one line if of an unknown format)."""
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        check_format(f"composition state {path}", meta.get("format", 1), (1, STATE_FORMAT))
        tensors = load_file(str(path))
        names = {k.rsplit(".mask", 1)[0] for k in tensors if k.endswith((".mask", MASK_BITS))}
        names |= {k.rsplit(".grid.", 1)[0] for k in tensors if ".grid." in k}
        state = cls()
        if "model" in meta:
            state.model = ModelTransforms.from_json(meta["model"])
        for name in names:
            mask = _mask(tensors, name)
            grid = (
                QuantGrid.from_tensors(tensors, f"{name}.grid")
                if f"{name}.grid.meta" in tensors
                else None
            )
            state.set(name, UnitConstraint(mask, grid))
        return state


def _mask(tensors: dict[str, Tensor], name: str) -> Tensor | None:
    """The bool mask of unit ``name``: packed (format 2), one byte per weight (format 1), none."""
    if name + MASK_BITS in tensors:
        shape = tensors[name + MASK_SHAPE].tolist()
        return unpack(tensors[name + MASK_BITS], 1, math.prod(shape)).bool().reshape(shape)
    mask = tensors.get(f"{name}.mask")
    return None if mask is None else mask.bool()
