"""Content-addressed cache of compressed prefixes on disk.

A prefix (the model after its first k steps) is stored as its weights written compactly as what
differs from the study's dense model (``pqorder.compact``: grid codes, kept values, raw tensors
for the rest, nothing for what is unchanged), the composition state (model-level transforms
included) and the step records, under a hash of what determines it: the model, the step texts,
the engine options, and the calibration set when a calibrated step is among them. Loading a
prefix (into a study of the same dense model) gives back bit for bit the weights it was saved
with, so it plus one more step equals a fresh run on CPU. The cache is capped in size; the least
recently used prefixes are evicted first.

Each entry names its format in ``entry.json``. An entry of any other format (left by an older
or a newer pqorder) counts as absent: the prefix is recomputed and the entry replaced, since a
cache entry can always be rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from pqorder.compact import decode, encode, manifest_from_text, manifest_text
from pqorder.core import LoadedModel
from pqorder.dense import DenseReference
from pqorder.engine import StepRecord
from pqorder.errors import ConfigError
from pqorder.paths import cache_dir
from pqorder.state import CompressionState

WEIGHTS = "weights.safetensors"  # the compact weights; how to rebuild each tensor in metadata
ENTRY = "entry.json"  # the format and the step records (format 1 had records.json instead)
FORMAT = 3  # version of an entry (2 held every parameter in model.safetensors)


def content_key(payload: dict) -> str:
    """Stable sha256 of a JSON-able description."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


class PrefixCache:
    def __init__(self, root: Path | None = None, max_gb: float | None = None) -> None:
        """A cache under ``root`` (default: the cache dir's ``prefixes``) of at most ``max_gb``
        (default: $PQORDER_PREFIX_CACHE_GB, else 8)."""
        if max_gb is None:
            text = os.environ.get("PQORDER_PREFIX_CACHE_GB", "8")
            try:
                max_gb = float(text)
            except ValueError:
                raise ConfigError(
                    f"PQORDER_PREFIX_CACHE_GB takes a size in GB, got {text!r}"
                ) from None
        self.root = Path(root) if root else cache_dir() / "prefixes"
        self.max_bytes = int(max_gb * 2**30)
        self.root.mkdir(parents=True, exist_ok=True)

    def _records(self, key: str) -> list[dict] | None:
        """The step records of a complete entry of this format, else None."""
        folder = self.root / key
        try:
            entry = json.loads((folder / ENTRY).read_text())
        except (OSError, ValueError):
            return None
        if entry.get("format") != FORMAT or not (folder / WEIGHTS).exists():
            return None
        return entry["records"]

    def has(self, key: str) -> bool:
        return self._records(key) is not None

    def load(self, key: str, lm: LoadedModel, dense: DenseReference) -> list[StepRecord]:
        """Put the cached prefix into ``lm`` (structure, weights, constraints), reading what it
        left unchanged from ``dense`` (the dense model it was saved against); return records."""
        folder = self.root / key
        records = self._records(key)
        if records is None:
            raise KeyError(f"no prefix {key} of format {FORMAT} in {self.root}")
        state = CompressionState.load(folder / "state.safetensors")
        with safe_open(str(folder / WEIGHTS), "pt") as f:
            manifest = manifest_from_text(f.metadata()["manifest"])
        decode(lm, state, str(folder / WEIGHTS), manifest, dense)
        os.utime(folder)  # recently used
        return [StepRecord(**r) for r in records]

    def save(
        self, key: str, lm: LoadedModel, records: list[StepRecord], dense: DenseReference
    ) -> None:
        """Write atomically (temp dir, then rename), then evict down to the size cap."""
        if self.has(key):
            return
        shutil.rmtree(self.root / key, ignore_errors=True)  # an entry of an older format
        tmp = Path(tempfile.mkdtemp(prefix=".prefix-", dir=self.root))
        try:
            tensors, manifest = encode(lm, dense)
            save_file(tensors, str(tmp / WEIGHTS), metadata={"manifest": manifest_text(manifest)})
            lm.state.save(tmp / "state.safetensors")
            entry = {"format": FORMAT, "records": [r.to_dict() for r in records]}
            (tmp / ENTRY).write_text(json.dumps(entry))
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
