"""The LLaMA-family layout that rotation and head/channel pruning rely on.

Decoder blocks hold ``input_layernorm`` (RMSNorm) → ``self_attn`` (q/k/v/o_proj) and
``post_attention_layernorm`` → ``mlp`` (gate/up/down_proj); the model ends with ``model.norm``
and ``lm_head``. Mistral and Qwen2 share it.
"""

from __future__ import annotations

from torch import nn

from pqorder.errors import ConfigError

LLAMA_FAMILY = ("llama", "mistral", "qwen2")
ATTENTION_INPUTS = ("q_proj", "k_proj", "v_proj")
MLP_INPUTS = ("gate_proj", "up_proj")


def check_llama_family(model: nn.Module, what: str) -> None:
    """ConfigError naming the model type unless ``model`` has the LLaMA layout."""
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    if model_type not in LLAMA_FAMILY:
        raise ConfigError(
            f"{what} supports LLaMA-family models ({', '.join(LLAMA_FAMILY)}); "
            f"'{model_type}' is not one of them"
        )


def head_dim(config: object) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
