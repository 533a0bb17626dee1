"""What checksumming costs a prefix-cache entry of the full SmolLM2.

For a few pipelines without calibration (RTN, magnitude, rotation: the entry kinds of codes,
kept values and raw tensors), the model is compressed once, saved as a cache entry, and timed:
saving (which checksums every file it wrote), checksumming the entry's files alone (sha256, as
the cache does, and blake2b and crc32 for comparison), and loading it (checksums, then decode).
Each timing is the best of three, the files in the page cache. Run: python
benchmarks/prefix_checksum.py (about a minute on 2 cores; timings depend on the load).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from pqorder.dense import DenseReference
from pqorder.engine import apply_step
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline
from pqorder.prefix_cache import CHUNK, ENTRY, PrefixCache, checksum

PIPELINES = ("rtn:bits=4,group=128", "magnitude:ratio=0.5", "rotate")


def _best(fn: Callable[[], object], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _hash_files(files: list[Path], make: Callable[[], object]) -> None:
    for path in files:
        digest = make()
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)


def _crc_files(files: list[Path]) -> None:
    for path in files:
        crc = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                crc = zlib.crc32(chunk, crc)


def main() -> None:
    os.environ.setdefault("TQDM_DISABLE", "1")
    lm = load_model("smollm2-135m")
    dense = DenseReference(lm)
    print("| pipeline | entry MiB | save s | sha256 s | blake2b s | crc32 s | load s |")
    print("|---|---|---|---|---|---|---|")
    for text in PIPELINES:
        dense.restore(lm)
        for step in parse_pipeline(text).steps:
            apply_step(lm, step, None, progress=False)
        with tempfile.TemporaryDirectory() as tmp:
            cache = PrefixCache(Path(tmp), max_gb=100)
            folder = cache.root / "k"

            def save(cache: PrefixCache = cache, folder: Path = folder) -> None:
                cache.save("k", lm, [], dense)
                for f in folder.iterdir():
                    f.unlink()
                folder.rmdir()

            save_s = _best(save)
            cache.save("k", lm, [], dense)
            files = [f for f in folder.iterdir() if f.name != ENTRY]
            mib = sum(f.stat().st_size for f in files) / 2**20
            sha = _best(lambda files=files: [checksum(f) for f in files])
            blake = _best(lambda files=files: _hash_files(files, hashlib.blake2b))
            crc = _best(lambda files=files: _crc_files(files))
            load = _best(lambda cache=cache: cache.load("k", lm, dense))
        print(
            f"| {text} | {mib:.1f} | {save_s:.2f} | {sha:.3f} | {blake:.3f} | {crc:.3f} | "
            f"{load:.2f} |"
        )


if __name__ == "__main__":
    main()
