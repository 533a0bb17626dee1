"""What pqorder knows about each model family's layout, declared once (no subclass per model).

An ``Architecture`` says where the repeated blocks are, what runs between the last block and
the LM head (the final norm first), and inside a block: the attention module, the units that
read the residual stream through each input norm (q/k/v or a fused qkv; gate/up, a fused
gate_up or fc1), the units that write back to it (o/out/c_proj, down/fc2), the norms and their
kind, and which model-level methods the family supports, with the reason when it does not.
Unit names are relative to a block; the order of ``sequence`` is the order a block runs them.
Unit-wise methods (pruning, quantization) only need ``blocks``: they work on every family, and
on any model whose blocks sit at one of the usual paths.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from torch import nn

from pqorder.errors import ConfigError

NormKind = Literal["rmsnorm", "rmsnorm+1", "layernorm"]  # w·x̂, (1+w)·x̂, w·x̂ + b
Capability = Literal["rotate", "structured", "kv-cache", "sleb", "share"]
CAPABILITIES: tuple[Capability, ...] = ("rotate", "structured", "kv-cache", "sleb", "share")
NEEDS: dict[Capability, str] = {
    "rotate": "a pre-norm RMSNorm layout with separate q/k/v and gate/up projections",
    "structured": "separate q/k/v projections and a gated MLP with separate gate/up/down",
    "kv-cache": "a causal decoder whose attention runs through transformers' attention interface",
    "sleb": "a causal decoder with a declared final norm before its LM head",
    "share": "a decoder whose attention and MLP projections are declared nn.Linear layers",
}


@dataclass(frozen=True)
class AttentionLayout:
    """Query heads, key/value heads (GQA groups) and the width of one head."""

    heads: int
    kv_heads: int
    head_dim: int


@dataclass(frozen=True)
class Architecture:
    """One family's layout; paths inside a block are relative to the block."""

    family: str
    blocks: str  # attribute path of the block ModuleList
    final: tuple[str, ...] = ()  # model paths after the last block, final norm first
    norm: NormKind = "rmsnorm"
    attention: str | None = None  # the attention module (owns layer_idx, receives K/V)
    qkv: tuple[str, ...] = ()  # units reading the attention's input norm: q, k, v or fused
    attention_out: str | None = None  # writes the attention's result to the residual stream
    mlp_in: tuple[str, ...] = ()  # units reading the MLP's input norm: gate, up or fused, fc1
    mlp_out: str | None = None  # writes the MLP's result to the residual stream
    input_norms: tuple[str, ...] = ()  # the norms in front of attention and MLP (pre-norm)
    output_norms: tuple[str, ...] = ()  # norms on the attention/MLP outputs (Gemma3, BERT)
    head_norms: tuple[str, ...] = ()  # per-head norms of queries and keys (Qwen3, Gemma3)
    unsupported: tuple[tuple[Capability, str], ...] = ()  # what it cannot do, and why

    @property
    def sequence(self) -> tuple[tuple[str, ...], ...]:
        """Unit groups in the order a block runs them; a group's units read one input."""
        groups = (self.qkv, (self.attention_out,), self.mlp_in, (self.mlp_out,))
        return tuple(g for g in groups if all(g))

    @property
    def final_norm(self) -> str | None:
        return self.final[0] if self.final else None

    def supports(self, capability: Capability) -> bool:
        return capability not in dict(self.unsupported)

    def check(self, capability: Capability, what: str) -> None:
        """ConfigError naming the family unless it supports ``capability``."""
        reason = dict(self.unsupported).get(capability)
        if reason is not None:
            raise ConfigError(f"{what} needs {NEEDS[capability]}; {self.family} {reason}")


def _none(reason: str) -> tuple[tuple[Capability, str], ...]:
    return tuple((c, reason) for c in CAPABILITIES)


LLAMA = Architecture(
    family="llama",
    blocks="model.layers",
    final=("model.norm",),
    attention="self_attn",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    attention_out="self_attn.o_proj",
    mlp_in=("mlp.gate_proj", "mlp.up_proj"),
    mlp_out="mlp.down_proj",
    input_norms=("input_layernorm", "post_attention_layernorm"),
)
QWEN3 = replace(LLAMA, family="qwen3", head_norms=("self_attn.q_norm", "self_attn.k_norm"))
FUSED = "fuses q/k/v (qkv_proj) and gate/up (gate_up_proj)"
FAMILIES: dict[str, Architecture] = {  # by config.model_type
    "llama": LLAMA,
    "mistral": replace(LLAMA, family="mistral"),
    "qwen2": replace(LLAMA, family="qwen2"),  # q/k/v carry biases
    "qwen3": QWEN3,
    "gemma3_text": replace(
        QWEN3,
        family="gemma3",
        norm="rmsnorm+1",
        input_norms=("input_layernorm", "pre_feedforward_layernorm"),
        output_norms=("post_attention_layernorm", "post_feedforward_layernorm"),
        unsupported=(("rotate", "uses (1+w) RMSNorms and norms on the attention/MLP outputs"),),
    ),
    "phi3": replace(
        LLAMA,
        family="phi3",
        qkv=("self_attn.qkv_proj",),
        mlp_in=("mlp.gate_up_proj",),
        unsupported=(("rotate", FUSED), ("structured", FUSED)),
    ),
    "opt": Architecture(
        family="opt",
        blocks="model.decoder.layers",
        final=("model.decoder.final_layer_norm", "model.decoder.project_out"),
        norm="layernorm",
        attention="self_attn",
        qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        attention_out="self_attn.out_proj",
        mlp_in=("fc1",),
        mlp_out="fc2",
        input_norms=("self_attn_layer_norm", "final_layer_norm"),  # after them if post-norm
        unsupported=(
            ("rotate", "uses LayerNorm with bias"),
            ("structured", "has an ungated fc1/fc2 MLP"),
        ),
    ),
    "gpt2": Architecture(
        family="gpt2",
        blocks="transformer.h",
        final=("transformer.ln_f",),
        norm="layernorm",
        attention="attn",
        qkv=("attn.c_attn",),
        attention_out="attn.c_proj",
        mlp_in=("mlp.c_fc",),
        mlp_out="mlp.c_proj",
        input_norms=("ln_1", "ln_2"),
        unsupported=(
            ("rotate", "uses LayerNorm with bias and a fused c_attn"),
            ("structured", "fuses q/k/v (c_attn) and has an ungated c_fc/c_proj MLP"),
            ("share", "stores its projections as transposed Conv1D weights"),
        ),
    ),
    "bert": Architecture(
        family="bert",
        blocks="encoder.layer",
        norm="layernorm",
        attention="attention.self",
        qkv=("attention.self.query", "attention.self.key", "attention.self.value"),
        attention_out="attention.output.dense",
        mlp_in=("intermediate.dense",),
        mlp_out="output.dense",
        output_norms=("attention.output.LayerNorm", "output.LayerNorm"),
        unsupported=_none("is a post-norm encoder (LayerNorm after each residual add)"),
    ),
}
# Where other models keep their blocks (GPT-NeoX, BERT heads, vision models): unit-wise
# methods work on them, model-level ones are refused.
OTHER_BLOCKS = (
    "model.layers",
    "model.decoder.layers",
    "transformer.h",
    "gpt_neox.layers",
    "encoder.layer",
    "bert.encoder.layer",
    "blocks",
)


def resolve_blocks(model: nn.Module, path: str) -> nn.ModuleList | None:
    """The ModuleList at ``path`` of ``model``, or None."""
    obj: object = model
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj if isinstance(obj, nn.ModuleList) else None


def architecture(model: nn.Module) -> Architecture:
    """The declared layout of ``model``'s family, or a blocks-only one for other models."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    known = FAMILIES.get(model_type)
    if known is not None and resolve_blocks(model, known.blocks) is not None:
        return known
    name = model_type or type(model).__name__
    for path in OTHER_BLOCKS:
        if resolve_blocks(model, path) is not None:
            reason = (
                "has no declared layout (pqorder.models.architecture)"
                if model_type
                else "is not a transformers model"
            )
            return Architecture(family=name, blocks=path, unsupported=_none(reason))
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__}; supported families: "
        f"{', '.join(a.family for a in FAMILIES.values())}; other layouts: "
        f"{', '.join(OTHER_BLOCKS)}"
    )


def final_layers(model: nn.Module) -> nn.Sequential:
    """What runs between the last block and the LM head, in order (the modules a checkpoint
    lacks are left out: OPT's final norm when post-norm, its projection when not needed)."""
    modules = []
    for path in architecture(model).final:
        module: object = model
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None:
            modules.append(module)
    return nn.Sequential(*modules)


def attention_layout(config: object) -> AttentionLayout:
    """Head counts and head width from a transformers config (GPT-2's names mapped by it)."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return AttentionLayout(heads, kv_heads, head_dim)
