"""GGUF export of LLaMA models: Q8_0 / Q4_0 blocks written from pqorder's own codes and scales.

A GGUF Q8_0 block is 32 consecutive weights of a row as ``d · q`` (fp16 ``d``, int8 ``q``); a
Q4_0 block is ``d · (q − 8)`` with ``q`` in [0, 15] as nibbles (weight j in the low nibble of
byte j, weight j + 16 in the high one). pqorder's symmetric grid is ``scale · (code − 2^(b−1))``,
so the blocks hold pqorder's codes unchanged and its scale per block (a group of g = k·32
weights gives k blocks with the same scale). The one change is the scale's precision: GGUF
stores ``d`` as fp16, so each weight moves by at most 2^-11 of its value (scales outside the
normal fp16 range are refused). ``gguf.quantize`` is not used: it re-derives scales from the
weights and would not keep the grid.

Refused before writing: non-LLaMA models, asymmetric grids (Q4_0/Q8_0 have no zero point),
bit-widths other than 4 and 8, groups or rows that are not multiples of 32, rope scaling.
Units without a grid, embeddings and norms are written as F32 (a pruned-only model is a valid
F32 GGUF, with a note). Query and key rows are permuted into GGML's rotary layout, as
llama.cpp's converter does; a row's codes and scales move together, so the grid is kept.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType
from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.errors import ConfigError
from pqorder.export.checks import check_plain_forward, signed_codes
from pqorder.models.adapter import compressible_units, decoder_blocks, get_weight
from pqorder.models.architecture import architecture, attention_layout
from pqorder.quantgrid import QuantGrid

BLOCK = 32
FP16_MIN_NORMAL = 2.0**-14
BLOCK_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}


@dataclass
class GGUFPlan:
    """Every tensor as GGUF will hold it (raw block bytes or F32) and notes for the user."""

    tensors: list[tuple[str, np.ndarray, GGMLQuantizationType | None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _permute_rows(t: Tensor, n_head: int) -> Tensor:
    """HF's rotary row order → GGML's (pairs of a head's halves interleaved)."""
    return t.reshape(n_head, 2, t.shape[0] // n_head // 2, -1).swapaxes(1, 2).reshape(t.shape)


def _block_scales(name: str, grid: QuantGrid, inp: int) -> Tensor:
    """One fp16 scale per 32-wide block, after checking the grid's groups map onto blocks."""
    per_channel = grid.group_size >= inp
    if inp % BLOCK or (not per_channel and grid.group_size % BLOCK):
        raise ConfigError(
            f"{name}: group size {grid.group_size} over {inp} inputs does not map onto GGUF's "
            f"{BLOCK}-wide blocks; quantize with a group that is a multiple of {BLOCK} (or per "
            "channel on rows that are)"
        )
    if per_channel:
        scale = grid.scale[:, :1].expand(-1, inp // BLOCK)
    else:
        scale = grid.scale.repeat_interleave(grid.group_size // BLOCK, dim=1)[:, : inp // BLOCK]
    if not bool(((scale.abs() >= FP16_MIN_NORMAL) & (scale.abs() <= 65504)).all()):
        raise ConfigError(f"{name}: a scale lies outside the normal fp16 range GGUF stores")
    return scale.contiguous().half()


def encode_blocks(codes: Tensor, scales: Tensor, bits: int) -> np.ndarray:
    """(out, in) signed codes and (out, in/32) fp16 scales → (out, bytes) raw Q8_0/Q4_0 rows."""
    out, inp = codes.shape
    d = scales.numpy().view(np.uint8).reshape(out, inp // BLOCK, 2)
    q = codes.numpy().reshape(out, inp // BLOCK, BLOCK)
    if bits == 8:
        body = q.view(np.uint8)
    else:
        u = (q + 8).astype(np.uint8)
        body = u[..., : BLOCK // 2] | (u[..., BLOCK // 2 :] << 4)
    return np.concatenate([d, body], axis=2).reshape(out, -1)


def _config_checks(lm: LoadedModel) -> None:
    check_plain_forward(lm, "gguf")
    config = lm.model.config
    if config.model_type != "llama":
        raise ConfigError(f"--format gguf writes LLaMA models only, not '{config.model_type}'")
    rope = getattr(config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ConfigError(f"--format gguf: rope scaling '{rope['rope_type']}' is not written")


def plan_gguf(lm: LoadedModel) -> GGUFPlan:
    """Check the model and encode every tensor in memory (nothing is written here)."""
    _config_checks(lm)
    model, config = lm.model, lm.model.config
    kinds = {4: GGMLQuantizationType.Q4_0, 8: GGMLQuantizationType.Q8_0}
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    units = compressible_units(model)
    plan = GGUFPlan()
    dense_units = []
    path, blocks = decoder_blocks(model)
    for i, block in enumerate(blocks):
        for local, short in BLOCK_NAMES.items():
            name, target = f"{path}.{i}.{local}", f"blk.{i}.{short}.weight"
            module = block.get_submodule(local)
            grid = lm.state.get(name).grid if name in units else None
            if grid is None:
                w = get_weight(module) if name in units else module.weight.detach().float()
                w = w.cpu()
                if short in heads:
                    w = _permute_rows(w, heads[short])
                plan.tensors.append((target, w.numpy(), None))
                dense_units += [name] if name in units else []
                continue
            codes = signed_codes(name, module, grid, "GGUF Q4_0/Q8_0")
            scales = _block_scales(name, grid, codes.shape[1])
            if short in heads:
                codes, scales = (
                    _permute_rows(codes, heads[short]),
                    _permute_rows(scales, heads[short]),
                )
            plan.tensors.append((target, encode_blocks(codes, scales, grid.bits), kinds[grid.bits]))
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    plan.tensors.append(("token_embd.weight", emb.detach().float().numpy(), None))
    norm = model.get_submodule(architecture(model).final_norm)
    plan.tensors.append(("output_norm.weight", norm.weight.detach().float().numpy(), None))
    if head is not emb:
        plan.tensors.append(("output.weight", head.detach().float().numpy(), None))
    if dense_units:
        plan.notes.append(f"{len(dense_units)} of {len(units)} units have no grid: written as F32")
    return plan


def _write_tokenizer(writer: object, lm: LoadedModel) -> None:
    """The tokenizer as GGUF metadata (GPT-2 style BPE from tokenizer.json, special tokens)."""
    from gguf import SpecialVocab
    from gguf.vocab import BpeVocab

    with tempfile.TemporaryDirectory() as tmp:
        lm.tokenizer.save_pretrained(tmp)
        try:
            vocab = BpeVocab(Path(tmp))
        except (FileNotFoundError, KeyError, ValueError) as exc:
            raise ConfigError(f"--format gguf writes BPE tokenizers only ({exc})") from exc
        tokens, scores, types = zip(*vocab.all_tokens(), strict=True)
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(list(tokens))
        writer.add_token_scores(list(scores))
        writer.add_token_types(list(types))
        SpecialVocab(Path(tmp), load_merges=True).add_to_gguf(writer, quiet=True)


def write_gguf(lm: LoadedModel, path: Path, plan: GGUFPlan) -> None:
    """The GGUF file: LLaMA hyper-parameters, tokenizer, then every planned tensor."""
    from gguf import GGUFWriter

    config = lm.model.config
    rope = getattr(config, "rope_parameters", None) or {}
    writer = GGUFWriter(str(path), "llama")
    writer.add_name(Path(lm.name).name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 1e4))))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_dimension_count(attention_layout(config).head_dim)
    writer.add_vocab_size(config.vocab_size)
    _write_tokenizer(writer, lm)
    for name, data, raw in plan.tensors:
        writer.add_tensor(name, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
