"""Content-addressed cache of compressed prefixes on disk, safe to share between processes.

A prefix (the model after its first k steps) is stored as its weights written compactly as what
differs from the study's dense model (``pqorder.compact``: grid codes, kept values, raw tensors
for the rest, nothing for what is unchanged), the composition state (model-level transforms
included) and the step records, under a hash of what determines it: the model, the step texts,
the engine options, and the calibration set when a calibrated step is among them. Loading a
prefix (into a study of the same dense model) gives back bit for bit the weights it was saved
with, so it plus one more step equals a fresh run on CPU. The cache is capped in size; the least
recently used prefixes are evicted first.

Several processes (workers of a sweep, two sweeps) may share one cache directory. An entry is
written into a temp directory and renamed into place, so a reader sees a whole entry or none.
Each entry has a lock (``flock`` on ``.locks/<key>``, released by the kernel when its holder
dies): whoever computes a prefix holds it until the entry is written, so a second process that
wants the same prefix waits and then loads it instead of computing it twice; eviction skips
entries in use. ``entry.json`` records the size and checksum of each file: an entry whose
files do not match (truncated, damaged, half-copied) counts as absent, is removed, and the
prefix is recomputed. A write that fails (disk full, read-only directory) leaves no partial
entry and is a one-line ``WriteError``.

Each entry names its format in ``entry.json``. An entry of any other format (left by an older
or a newer pqorder) counts as absent: the prefix is recomputed and the entry replaced, since a
cache entry can always be rebuilt.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from pqorder.atomic import check_writable, is_write_failure, write_error
from pqorder.compact import decode, encode, manifest_from_text, manifest_text
from pqorder.core import LoadedModel
from pqorder.dense import DenseReference
from pqorder.engine import StepRecord
from pqorder.errors import ConfigError
from pqorder.paths import cache_dir
from pqorder.state import CompressionState

WEIGHTS = "weights.safetensors"  # the compact weights; how to rebuild each tensor in metadata
STATE = "state.safetensors"  # the composition state
ENTRY = "entry.json"  # the format, the step records and each file's size and checksum
FORMAT = 4  # version of an entry (3 had no checksums; 2 held every parameter uncompacted)
LOCKS = ".locks"  # one lock file per key (never removed: removing one would race its lockers)
CHUNK = 1 << 22  # bytes read at a time when checksumming


def content_key(payload: dict) -> str:
    """Stable sha256 of a JSON-able description."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def checksum(path: Path) -> str:
    """The sha256 digest of a file in one pass of 4 MiB chunks (sha256: the fastest hashlib
    digest where the CPU has SHA instructions, about twice blake2b on a SmolLM2 entry)."""
    digest = hashlib.sha256()
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as fh:
        while n := fh.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


class PrefixCache:
    def __init__(self, root: Path | None = None, max_gb: float | None = None) -> None:
        """A cache under ``root`` (default: the cache dir's ``prefixes``) of at most ``max_gb``
        (default: $PQORDER_PREFIX_CACHE_GB, else 8); a directory that cannot be written is
        refused here, before any work."""
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
        what = f"the prefix cache {self.root} (pass --no-cache, or set PQORDER_CACHE elsewhere)"
        check_writable(self.root, what)
        try:
            (self.root / LOCKS).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot write {what}: {exc.strerror or exc}") from None

    # -- locks ----------------------------------------------------------------------------
    @contextmanager
    def _locked(self, key: str, wait: bool = True) -> Iterator[bool]:
        """Hold the entry's exclusive lock (waiting for it, or not: then yield False if busy).

        One process must not take the same key's lock twice: a second open file would wait for
        the first.
        """
        fd = os.open(self.root / LOCKS / key, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # releases the lock

    # -- reading --------------------------------------------------------------------------
    def _entry(self, key: str) -> dict | None:
        """The entry.json of an entry of this format, else None."""
        try:
            entry = json.loads((self.root / key / ENTRY).read_text())
            if entry["format"] != FORMAT or set(entry["files"]) != {WEIGHTS, STATE}:
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return entry

    def has(self, key: str) -> bool:
        """Whether an entry of this format is stored with files of their recorded sizes (a
        cheap check; the checksums are compared when it is loaded)."""
        entry = self._entry(key)
        return entry is not None and _intact(self.root / key, entry, read=False)

    def load(self, key: str, lm: LoadedModel, dense: DenseReference) -> list[StepRecord] | None:
        """Put the cached prefix into ``lm`` (structure, weights, constraints), reading what it
        left unchanged from ``dense`` (the dense model it was saved against); return its
        records. None, with ``lm`` untouched, when there is no sound entry (a damaged one is
        removed). Waits while another process writes this entry."""
        with self._locked(key):
            return self._load(key, lm, dense)

    def _load(self, key: str, lm: LoadedModel, dense: DenseReference) -> list[StepRecord] | None:
        folder = self.root / key
        entry = self._entry(key)
        if entry is None:  # absent, or of another format (replaced when saved)
            return None
        if not _intact(folder, entry, read=True):
            shutil.rmtree(folder, ignore_errors=True)
            return None
        state = CompressionState.load(folder / STATE)
        with safe_open(str(folder / WEIGHTS), "pt") as f:
            manifest = manifest_from_text(f.metadata()["manifest"])
        decode(lm, state, str(folder / WEIGHTS), manifest, dense)
        os.utime(folder)  # recently used
        return [StepRecord(**r) for r in entry["records"]]

    # -- writing --------------------------------------------------------------------------
    def save(
        self, key: str, lm: LoadedModel, records: list[StepRecord], dense: DenseReference
    ) -> None:
        """Write the prefix ``lm`` holds atomically (temp dir, then rename) unless a complete
        entry is stored, then evict down to the size cap."""
        with self._locked(key):
            if not self.has(key):
                self._save(key, lm, records, dense)
        self._evict(keep=key)

    def load_or_compute(
        self,
        key: str,
        lm: LoadedModel,
        dense: DenseReference,
        compute: Callable[[], list[StepRecord]],
    ) -> tuple[list[StepRecord], bool]:
        """Make ``lm`` hold the prefix ``key``: loaded from a sound entry, else by ``compute()``
        (applied to ``lm``, returning the records) and saved. The entry's lock is held
        throughout, so a process wanting the same prefix meanwhile waits, then loads it.
        Returns the records and whether they came from the cache."""
        with self._locked(key):
            records = self._load(key, lm, dense)
            if records is not None:
                return records, True
            records = compute()
            self._save(key, lm, records, dense)
        self._evict(keep=key)
        return records, False

    def _save(
        self, key: str, lm: LoadedModel, records: list[StepRecord], dense: DenseReference
    ) -> None:
        """Write the entry (the caller holds its lock), replacing whatever is at its place."""
        folder = self.root / key
        tmp = None
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=self.root))
            tensors, manifest = encode(lm, dense)
            save_file(tensors, str(tmp / WEIGHTS), metadata={"manifest": manifest_text(manifest)})
            lm.state.save(tmp / STATE)
            files = {
                name: {"bytes": (tmp / name).stat().st_size, "sha256": checksum(tmp / name)}
                for name in (WEIGHTS, STATE)
            }
            entry = {"format": FORMAT, "records": [r.to_dict() for r in records], "files": files}
            (tmp / ENTRY).write_text(json.dumps(entry))
            shutil.rmtree(folder, ignore_errors=True)  # damaged, or of another format
            tmp.rename(folder)
        except BaseException as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            if is_write_failure(exc):
                hint = "free space, lower PQORDER_PREFIX_CACHE_GB, or pass --no-cache"
                raise write_error(folder, exc, hint) from exc
            raise

    def _evict(self, keep: str) -> None:
        """Remove least recently used entries (never ``keep``, nor one in use) down to the cap,
        and temp directories whose writer died (their key's lock is free)."""
        sizes, used = {}, {}
        for path in self.root.iterdir():
            key, temp, _ = path.name[1:].partition("-")
            try:
                if path.name.startswith(".") and temp:  # a temp dir: .<key>-<random>
                    with self._locked(key, wait=False) as free:
                        if free:
                            shutil.rmtree(path, ignore_errors=True)
                elif path.is_dir() and not path.name.startswith("."):
                    used[path] = path.stat().st_mtime
                    sizes[path] = sum(f.stat().st_size for f in path.iterdir())
            except OSError:  # removed by another process meanwhile
                sizes.pop(path, None)
                used.pop(path, None)
        total = sum(sizes.values())
        for path in sorted(sizes, key=used.__getitem__):
            if total <= self.max_bytes:
                break
            if path.name == keep:
                continue
            with self._locked(path.name, wait=False) as free:
                if free:
                    total -= sizes[path]
                    shutil.rmtree(path, ignore_errors=True)


def _intact(folder: Path, entry: dict, read: bool) -> bool:
    """Whether every file of the entry has the size and (``read``: reading it whole) the
    checksum it was written with."""
    try:
        files = entry["files"].items()
        return all((folder / name).stat().st_size == f["bytes"] for name, f in files) and (
            not read or all(checksum(folder / name) == f["sha256"] for name, f in files)
        )
    except (OSError, KeyError, TypeError, AttributeError):
        return False
