"""Content-addressed cache of compressed prefixes on disk.

A prefix (the model after its first k steps) is stored as the unit weights, the composition
state and the step records, under a hash of what determines it: the model, the step texts,
the engine options, and the calibration set when a calibrated step is among them. Loading a
prefix and applying one more step gives bit-identical weights to a fresh run on CPU. The
cache is capped in size; the least recently used prefixes are evicted first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors.torch import load_file, save_file

from pqorder.engine import StepRecord
from pqorder.models.adapter import compressible_units, get_weight, set_weight
from pqorder.models.loading import LoadedModel
from pqorder.models.vision import load_norm_buffers, norm_buffers
from pqorder.paths import cache_dir
from pqorder.state import CompressionState

DEFAULT_MAX_GB = float(os.environ.get("PQORDER_PREFIX_CACHE_GB", "8"))


def content_key(payload: dict) -> str:
    """Stable sha256 of a JSON-able description."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class PrefixCache:
    def __init__(self, root: Path | None = None, max_gb: float = DEFAULT_MAX_GB) -> None:
        self.root = Path(root) if root else cache_dir() / "prefixes"
        self.max_bytes = int(max_gb * 2**30)
        self.root.mkdir(parents=True, exist_ok=True)

    def has(self, key: str) -> bool:
        return (self.root / key / "records.json").exists()

    def load(self, key: str, lm: LoadedModel) -> list[StepRecord]:
        """Put the cached prefix into ``lm`` (weights and constraints); return its records."""
        folder = self.root / key
        weights = load_file(str(folder / "weights.safetensors"))
        for name, module in compressible_units(lm.model).items():
            set_weight(module, weights[name])
        load_norm_buffers(lm.model, {k[6:]: v for k, v in weights.items() if k[:6] == "norms:"})
        lm.state = CompressionState.load(folder / "state.safetensors")
        os.utime(folder)  # recently used
        return [StepRecord(**r) for r in json.loads((folder / "records.json").read_text())]

    def save(self, key: str, lm: LoadedModel, records: list[StepRecord]) -> None:
        """Write atomically (temp dir, then rename), then evict down to the size cap."""
        if self.has(key):
            return
        tmp = Path(tempfile.mkdtemp(prefix=".prefix-", dir=self.root))
        try:
            weights = {n: get_weight(m) for n, m in compressible_units(lm.model).items()}
            weights |= {f"norms:{k}": v for k, v in norm_buffers(lm.model).items()}
            save_file(weights, str(tmp / "weights.safetensors"))
            lm.state.save(tmp / "state.safetensors")
            (tmp / "records.json").write_text(json.dumps([r.to_dict() for r in records]))
            tmp.rename(self.root / key)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._evict(keep=key)

    def _evict(self, keep: str) -> None:
        entries = [p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")]
        sizes = {p: sum(f.stat().st_size for f in p.iterdir()) for p in entries}
        total = sum(sizes.values())
        for path in sorted(entries, key=lambda p: p.stat().st_mtime):
            if total <= self.max_bytes:
                break
            if path.name != keep:
                total -= sizes[path]
                shutil.rmtree(path, ignore_errors=True)
