"""Every declared decoder family, as a tiny random-weight model built offline from its config
(2 blocks, hidden 64, 4 query / 2 key-value heads where the family has GQA, seed 0): the
declared layout matches what the forward pass runs, the layer-wise walk reproduces the model's
own block outputs (Gemma3's sliding/full layers included), KV-cache fake quantization and
rotation keep each family's function, and the registry's contract matrix runs every method
alone, after a pruning step and after a quantization step (Qwen2/Qwen3 also before and after a
rotation), or sees it refused by family name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import transformers
from torch import Tensor

from pqorder.core import LoadedModel
from pqorder.engine import apply_step, check_pipeline
from pqorder.errors import ConfigError
from pqorder.export import export_model
from pqorder.layerwise import capture_block_inputs, run_block
from pqorder.methods import REGISTRY
from pqorder.methods.base import make_step
from pqorder.models.adapter import compressible_units, decoder_blocks, run_model
from pqorder.models.architecture import FAMILIES, Architecture, architecture, final_layers
from pqorder.pipeline import parse_step
from pqorder.snapshot import take_snapshot
from tests.test_contract import CELLS, EXAMPLES, Bench, run_cell

GQA = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
CONFIGS = {  # family → a tiny config of it
    "llama": lambda: transformers.LlamaConfig(**GQA),
    "mistral": lambda: transformers.MistralConfig(**GQA),
    "qwen2": lambda: transformers.Qwen2Config(**GQA),
    "qwen3": lambda: transformers.Qwen3Config(**GQA, head_dim=16),
    "gemma3": lambda: transformers.Gemma3TextConfig(
        **GQA,
        head_dim=16,
        sliding_window=8,  # shorter than the 16-token samples: the two layer types differ
        layer_types=["sliding_attention", "full_attention"],
    ),
    "phi3": lambda: transformers.Phi3Config(**GQA),
    "opt": lambda: transformers.OPTConfig(
        vocab_size=128,
        hidden_size=64,
        ffn_dim=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=64,
        word_embed_proj_dim=64,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    ),
    "gpt2": lambda: transformers.GPT2Config(
        vocab_size=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=1,
        eos_token_id=2,
    ),
}
UNITS = {"phi3": 8, "gpt2": 8, "opt": 12}  # the others: 7 units per block
# Families that differ from LLaMA where a rotation acts (q/k/v biases, q/k norms) also run
# every step before and after a rotation.
ROTATED = ("qwen2", "qwen3")
ROTATED_CELLS = tuple(CELLS)


def tiny_family(family: str) -> LoadedModel:
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(CONFIGS[family]()).eval()
    return LoadedModel(family, model, None)


def _tokens(n: int, seed: int) -> Tensor:
    return torch.randint(3, 128, (n, 16), generator=torch.Generator().manual_seed(seed))


def _hidden(out: object) -> Tensor:
    return out if isinstance(out, Tensor) else out[0]


@pytest.fixture(scope="module")
def families() -> dict[str, Bench]:
    benches = {}
    for family in CONFIGS:
        lm = tiny_family(family)
        benches[family] = Bench(lm, _tokens(8, 0), {"": take_snapshot(lm)})
    return benches


def _declared(family: str) -> Architecture:
    return next(a for a in FAMILIES.values() if a.family == family)


def test_every_declared_decoder_family_is_tested_and_found():
    declared = {a.family for a in FAMILIES.values() if a.final}
    assert declared == set(CONFIGS)
    for family in CONFIGS:
        lm = tiny_family(family)
        assert architecture(lm.model) is _declared(family)
        assert len(compressible_units(lm.model)) == UNITS.get(family, 14)


@pytest.mark.parametrize("family", list(CONFIGS))
@torch.no_grad()
def test_declared_layout_is_what_the_forward_pass_runs(families, family):
    """Each block's units are exactly the declared ones; they run in the declared order; the
    units of a group read one tensor, which is the output of the declared input norm."""
    lm = families[family].lm
    families[family].start(())
    arch = architecture(lm.model)
    path, blocks = decoder_blocks(lm.model)
    block = blocks[1]
    calls: list[tuple[str, int]] = []
    norm_out: dict[str, int] = {}
    names = [n for g in arch.sequence for n in g]
    hooks = [
        block.get_submodule(n).register_forward_hook(
            lambda _m, a, _o, n=n: calls.append((n, id(a[0])))
        )
        for n in names
    ]
    hooks += [
        block.get_submodule(n).register_forward_hook(
            lambda _m, _a, o, n=n: norm_out.update({n: id(o)})
        )
        for n in arch.input_norms
    ]
    run_model(lm.model, _tokens(1, 1))
    for h in hooks:
        h.remove()
    units = {n.removeprefix(f"{path}.1.") for n in compressible_units(lm.model) if ".1." in n}
    assert set(names) == units
    group_of = {n: i for i, g in enumerate(arch.sequence) for n in g}
    order = [group_of[n] for n, _ in calls]
    assert sorted(order) == order and len(order) == len(names)  # each once, groups in order
    seen = dict(calls)
    for group in arch.sequence:
        assert len({seen[n] for n in group}) == 1, group
    for norm, group in zip(arch.input_norms, (arch.qkv, arch.mlp_in), strict=True):
        assert seen[group[0]] == norm_out[norm], (norm, group)


def _normalized(norm: torch.nn.Module, x: Tensor, kind: str) -> Tensor:
    """What a norm of the declared kind computes from its own parameters."""
    eps = getattr(norm, "eps", None) or getattr(norm, "variance_epsilon", 1e-6)
    if kind == "layernorm":
        x = x - x.mean(-1, keepdim=True)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * norm.weight + norm.bias
    scale = norm.weight + 1 if kind == "rmsnorm+1" else norm.weight
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * scale


@pytest.mark.parametrize("family", list(CONFIGS))
@torch.no_grad()
def test_declared_norms_are_the_blocks_norms(families, family):
    """Every norm inside a block is declared (input, output or per-head norm), the final norm
    is a model norm, and each computes what the declared kind says (LayerNorm with its bias,
    Gemma's (1+w) scale)."""
    bench = families[family]
    bench.start(())
    model = bench.lm.model
    arch = architecture(model)
    block = decoder_blocks(model)[1][0]
    norms = {n for n, m in block.named_modules() if "Norm" in type(m).__name__}
    assert norms == {*arch.input_norms, *arch.output_norms, *arch.head_norms}
    x = torch.randn(3, model.config.hidden_size, generator=torch.Generator().manual_seed(4))
    for name in arch.input_norms:
        norm = block.get_submodule(name)
        torch.testing.assert_close(norm(x), _normalized(norm, x, arch.norm), atol=1e-4, rtol=0)
    final = model.get_submodule(arch.final_norm)
    torch.testing.assert_close(final(x), _normalized(final, x, arch.norm), atol=1e-4, rtol=0)


@pytest.mark.parametrize("family", list(CONFIGS))
@torch.no_grad()
def test_walk_reproduces_the_models_own_block_outputs(families, family):
    """Captured block inputs and kwargs, run block after block, give what a plain forward
    pass computes in each block (Gemma3: sliding and full attention layers differ)."""
    lm = families[family].lm
    families[family].start(())
    _, blocks = decoder_blocks(lm.model)
    tokens = _tokens(4, 2)
    seen: dict[int, list[Tensor]] = {}
    hooks = [
        b.register_forward_hook(lambda _m, _a, o, i=i: seen.setdefault(i, []).append(_hidden(o)))
        for i, b in enumerate(blocks)
    ]
    for start in (0, 2):
        run_model(lm.model, tokens[start : start + 2])
    for h in hooks:
        h.remove()
    inputs = capture_block_inputs(lm.model, tokens, batch_size=2)
    for i, block in enumerate(blocks):
        outputs = run_block(block, inputs)
        for got, want in zip(outputs, seen[i], strict=True):
            torch.testing.assert_close(got, want, atol=0, rtol=0)
        inputs = inputs.then(outputs)


@pytest.mark.parametrize("family", [f for f in CONFIGS if _declared(f).supports("kv-cache")])
@torch.no_grad()
def test_kv_cache_quantization_reaches_every_familys_attention(families, family):
    """16-bit K/V through pqorder's attention function keeps the logits (masks, sliding
    windows, scaling as the family's own attention); 2-bit K/V changes them."""
    bench = families[family]
    bench.start(())
    tokens = _tokens(2, 3)
    dense = run_model(bench.lm.model, tokens).logits
    apply_step(bench.lm, make_step("actquant", {"bits": None, "kv_bits": 16}), progress=False)
    near = run_model(bench.lm.model, tokens).logits
    bench.start(())
    apply_step(bench.lm, make_step("actquant", {"bits": None, "kv_bits": 2}), progress=False)
    far = run_model(bench.lm.model, tokens).logits
    bench.start(())
    scale = dense.abs().max()
    assert (near - dense).abs().max() < 1e-3 * scale
    assert (far - dense).abs().max() > 1e-2 * scale


def test_refusals_name_the_family_and_what_it_lacks(families):
    opt, phi3 = families["opt"].lm, families["phi3"].lm
    with pytest.raises(ConfigError) as err:
        check_pipeline(opt, [parse_step("rotate")])
    assert str(err.value) == (
        "rotate needs a pre-norm RMSNorm layout with separate q/k/v and gate/up projections; "
        "opt uses LayerNorm with bias"
    )
    with pytest.raises(ConfigError, match=r"structured needs .*; phi3 fuses q/k/v"):
        check_pipeline(phi3, [parse_step("magnitude:ratio=0.5"), parse_step("structured")])
    with pytest.raises(ConfigError, match=r"quarot needs .*; gemma3 uses \(1\+w\) RMSNorms"):
        check_pipeline(families["gemma3"].lm, [parse_step("quarot")])
    torch.manual_seed(0)
    neox = transformers.AutoModelForCausalLM.from_config(
        transformers.GPTNeoXConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=1,
            num_attention_heads=4,
        )
    )
    lm = LoadedModel("neox", neox, None)
    check_pipeline(lm, [parse_step("gptq:bits=4")])  # unit-wise methods work on any blocks
    with pytest.raises(ConfigError, match=r"sleb needs .*; gpt_neox has no declared layout"):
        check_pipeline(lm, [parse_step("sleb:blocks=1")])


def _cases() -> Iterator[object]:
    """(family, cell, step) for every registered example: alone, after a pruning step and after
    a quantization step (and around a rotation on ``ROTATED``); a step the family cannot take
    gets one cell, where it is refused."""
    for family in CONFIGS:
        arch = _declared(family)
        for text in EXAMPLES.values():
            step = parse_step(text)
            refused = not all(arch.supports(c) for c in step.capabilities)
            cells = ROTATED_CELLS if family in ROTATED else ("alone", "after-prune", "after-quant")
            for cell in ("alone",) if refused else cells:
                yield pytest.param(family, cell, text, id=f"{family}|{cell}|{text}")


@pytest.mark.parametrize(("family", "cell", "text"), list(_cases()))
def test_contract_on_every_family(families, family, cell, text):
    bench = families[family]
    earlier, later = CELLS[cell]
    steps = tuple(parse_step(t) for t in (*earlier, text, *later))
    run_cell(bench, steps, len(earlier))


def test_the_matrix_covers_every_method_on_every_family():
    ran = {(p.values[0], parse_step(p.values[2]).name) for p in _cases()}
    assert ran == {(f, name) for f in CONFIGS for name in REGISTRY}


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "gemma3"])
@torch.no_grad()
def test_pruned_heads_and_channels_slice_out_of_other_families(families, family, tmp_path):
    """One head per KV group and a quarter of the MLP channels pruned: the dense export is a
    smaller plain checkpoint of the family computing the same logits (Qwen2's q biases,
    Qwen3/Gemma3's explicit head_dim and q/k norms, Gemma3's extra norms)."""
    bench = families[family]
    bench.start(())
    lm = bench.lm
    for text in ("structured:target=heads,ratio=0.5", "structured:ratio=0.25"):
        apply_step(lm, parse_step(text), progress=False)
    tokens = _tokens(2, 5)
    pruned = run_model(lm.model, tokens).logits
    folder = export_model(lm, "dense", tmp_path / family).path
    bench.start(())
    small = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    config = small.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (2, 2)
    assert config.intermediate_size == 96
    torch.testing.assert_close(run_model(small, tokens).logits, pruned, atol=1e-5, rtol=1e-4)


def _post_norm_opt() -> LoadedModel:
    """OPT-350m's layout in small: post-norm blocks, no final norm, a projection to a narrower
    embedding before the head."""
    config = CONFIGS["opt"]()
    config.do_layer_norm_before, config.word_embed_proj_dim = False, 32
    torch.manual_seed(0)
    return LoadedModel("opt-post", transformers.OPTForCausalLM(config).eval(), None)


@pytest.mark.parametrize("family", [*CONFIGS, "opt-post"])
@torch.no_grad()
def test_final_layers_lead_from_the_last_block_to_the_logits(families, family):
    """What SLEB scores through: head(final layers(last block's output)) is the model's logits."""
    if family == "opt-post":
        lm = _post_norm_opt()
    else:
        lm = families[family].lm
        families[family].start(())
    last = decoder_blocks(lm.model)[1][-1]
    seen = []
    hook = last.register_forward_hook(lambda _m, _a, o: seen.append(_hidden(o)))
    logits = run_model(lm.model, _tokens(2, 6)).logits
    hook.remove()
    head = lm.model.get_output_embeddings()
    torch.testing.assert_close(head(final_layers(lm.model)(seen[0])), logits, atol=1e-6, rtol=0)
    if family == "opt-post":
        apply_step(lm, parse_step("sleb:blocks=1,keep_first=0"), _tokens(4, 7), progress=False)
        assert len(decoder_blocks(lm.model)[1]) == 1


def test_memory_plan_counts_the_kwargs_of_every_layer_type():
    """Gemma3's sliding-window layers get their own mask and rotary tables: the plan holds
    both layer types' kwargs, not only block 0's."""
    from pqorder.plan import _walk_shapes

    mixed = tiny_family("gemma3").model
    config = CONFIGS["gemma3"]()
    config.layer_types = ["full_attention", "full_attention"]
    torch.manual_seed(0)
    alike = transformers.AutoModelForCausalLM.from_config(config).eval()
    kwargs_mixed, kwargs_alike = _walk_shapes(mixed, 16)[1], _walk_shapes(alike, 16)[1]
    assert kwargs_mixed > kwargs_alike > 0
