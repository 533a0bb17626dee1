"""The dense reference of a study: the model as the study found it, to come back to.

A study restores its dense model between orders and stores cached prefixes as differences from
it. Holding it as a second copy in memory doubles a study's memory; so when the model was loaded
from safetensors files (``LoadedModel.source``), every tensor that still equals its file, bit
for bit once cast to the parameter's dtype, is read back from the file when needed instead (onto
the parameter's device).
Construction checks this once, streaming tensor by tensor. Tensors that differ from the files
(a model changed in memory) or have none (models built in memory, buffers not saved) are copied
into memory as before. The composition state (a pqorder output directory carries one) is part
of the reference and always held in memory. Tied tensors (an LM head sharing the embedding) are
found in the files under the name of the tensor they share storage with.
"""

from __future__ import annotations

import copy
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.errors import PqorderError
from pqorder.snapshot import assign, put_state
from pqorder.state import STATE_FILE

_SAME_SIZE_INTS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def same_bits(a: Tensor, b: Tensor) -> bool:
    """Whether two tensors have the same dtype, shape and bit pattern (-0.0 is not 0.0; a NaN
    equals the same NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.device != b.device:
        b = b.to(a.device)
    as_int = _SAME_SIZE_INTS.get(a.element_size())
    if as_int is None or a.dtype == torch.bool:
        return torch.equal(a, b)
    return torch.equal(a.view(as_int), b.view(as_int))


class DenseReference:
    """Every tensor and the composition state of ``lm`` as it is now (``from_files=False``: all
    held in memory, like a snapshot)."""

    def __init__(self, lm: LoadedModel, from_files: bool = True) -> None:
        self.state = copy.deepcopy(lm.state)
        held = lm.model.state_dict()
        self.keys = tuple(held)
        self._kinds = {key: (t.device, t.dtype) for key, t in held.items()}
        use_files = from_files and lm.source is not None
        self._files = _matching_files(Path(lm.source), held) if use_files else {}
        self._memory = {k: t.detach().clone() for k, t in held.items() if k not in self._files}
        self._stamps = {path: _stamp(path) for path, _ in self._files.values()}

    @property
    def in_memory(self) -> tuple[str, ...]:
        """Names of the tensors held in memory (not read back from files)."""
        return tuple(self._memory)

    def tensors(self, keys: Iterable[str]) -> Iterator[tuple[str, Tensor]]:
        """(name, dense tensor) for each name, memory first, then file by file (do not modify
        them)."""
        by_file: dict[Path, list[str]] = defaultdict(list)
        for key in keys:
            if key in self._memory:
                yield key, self._memory[key]
            else:
                by_file[self._files[key][0]].append(key)
        for path, group in by_file.items():
            if _stamp(path) != self._stamps[path]:
                raise PqorderError(
                    f"{path} changed on disk since the study began, so its dense model cannot be "
                    "read back; start the study again"
                )
            for key in group:
                device, dtype = self._kinds[key]
                yield key, read_tensor(path, self._files[key][1]).to(device, dtype)

    def tensor(self, key: str) -> Tensor:
        return next(self.tensors([key]))[1]

    def restore(self, lm: LoadedModel) -> None:
        """Put ``lm`` back exactly as the reference was taken (state, structure, every tensor)."""
        live = put_state(lm, self.state, self.keys)
        for key, value in self.tensors(self.keys):
            assign(live, key, value)


def read_tensor(path: Path | str, name: str) -> Tensor:
    """One tensor of a safetensors file. The tensor maps the file, and pages of a file stay
    mapped (and counted in the RSS) until every tensor read from one opening is freed; opening
    once per tensor keeps a streamed read at one tensor resident, not the whole file."""
    with safe_open(str(path), "pt") as f:
        return f.get_tensor(name)


def _stamp(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns


def _matching_files(folder: Path, held: dict[str, Tensor]) -> dict[str, tuple[Path, str]]:
    """For every tensor of ``held`` equal to one in the folder's safetensors files: the file
    and the name there (a tied tensor may be saved under the name of its twin)."""
    where: dict[str, Path] = {}
    for path in sorted(folder.glob("*.safetensors")):
        if path.name != STATE_FILE:
            with safe_open(str(path), "pt") as f:
                where.update(dict.fromkeys(set(f.keys()) - where.keys(), path))
    twins: dict[tuple, list[str]] = defaultdict(list)
    for key, t in held.items():
        twins[(t.device, t.data_ptr(), t.shape, t.stride())].append(key)
    wanted: dict[Path, dict[str, str]] = defaultdict(dict)  # file -> {key: name in file}
    for names in twins.values():
        stored = next((n for n in names if n in where), None)
        for key in names if stored is not None else ():
            wanted[where[stored]][key] = stored
    found: dict[str, tuple[Path, str]] = {}
    for path, names in wanted.items():
        for key, name in names.items():
            if same_bits(held[key], read_tensor(path, name).to(held[key].dtype)):
                found[key] = (path, name)
    return found
