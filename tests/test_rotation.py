"""QuaRot rotation, activation/KV fake quantization and their composition rules (real SmolLM2)."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

import pqorder.transforms as transforms
from pqorder.core import LoadedModel
from pqorder.data.calibration import CalibrationSpec
from pqorder.engine import check_pipeline
from pqorder.errors import ConfigError, OrderError
from pqorder.hadamard import hadamard, random_rotation
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline, run_pipeline

IDS = torch.arange(200, 328).view(2, 64)


def _logits(lm):
    with torch.no_grad():
        return lm.model(input_ids=IDS, use_cache=False).logits


@pytest.mark.parametrize("n", [12, 20, 36, 64, 576, 1536])
def test_hadamard_orders_of_real_models(n):
    h = hadamard(n)
    assert set(h.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(h @ h.t(), n * torch.eye(n, dtype=h.dtype))
    q = random_rotation(n, seed=3)
    assert torch.allclose(q @ q.t(), torch.eye(n, dtype=q.dtype), atol=1e-12)


def test_hadamard_order_that_cannot_exist():
    with pytest.raises(ConfigError, match="rotation=orthogonal"):
        hadamard(6)


@pytest.mark.parametrize("step", ["rotate", "rotate:online=false", "rotate:rotation=orthogonal"])
def test_rotation_keeps_the_function(tiny, step):
    before = _logits(tiny)
    record = run_pipeline(tiny, parse_pipeline(step), progress=False).records[0]
    after = _logits(tiny)
    assert (after - before).abs().max() < 1e-3 * before.abs().max()
    assert record.family == "rotate" and record.units == 14
    # Weights really changed (rotated), norms folded, lm_head untied from the embeddings.
    assert not torch.allclose(tiny.model.model.layers[0].self_attn.q_proj.weight, torch.zeros(1))
    assert torch.equal(tiny.model.model.norm.weight, torch.ones(576))
    assert tiny.model.lm_head.weight is not tiny.model.model.embed_tokens.weight


def test_rotation_keeps_full_model_logits(smol):
    before = _logits(smol)
    run_pipeline(smol, parse_pipeline("rotate"), progress=False)
    assert (_logits(smol) - before).abs().max() < 1e-3 * before.abs().max()


def test_restoring_dense_undoes_rotation_and_hooks(tiny, dense_tiny):
    before = _logits(tiny)
    run_pipeline(tiny, parse_pipeline("rotate > actquant:bits=4,kv_bits=4"), progress=False)
    from pqorder.snapshot import restore_snapshot

    restore_snapshot(tiny, dense_tiny)
    assert torch.equal(_logits(tiny), before)
    assert tiny.model.lm_head.weight is tiny.model.model.embed_tokens.weight
    assert tiny.model.config._attn_implementation == "sdpa"


def _unit_inputs(lm):
    seen = {}

    def keep(name):
        def hook(_module, args, _out):
            seen[name] = args[0].detach()

        return hook

    hooks = [m.register_forward_hook(keep(n)) for n, m in compressible_units(lm.model).items()]
    _logits(lm)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("bits", [4, 8])
def test_activation_quant_rounds_every_unit_input(tiny, bits):
    dense_inputs = _unit_inputs(tiny)
    assert max(len(x[0, 5].unique()) for x in dense_inputs.values()) > 2**bits
    run_pipeline(tiny, parse_pipeline(f"actquant:bits={bits}"), progress=False)
    inputs = _unit_inputs(tiny)
    assert len(inputs) == 14
    for x in inputs.values():
        per_token = [len(row.unique()) for row in x.reshape(-1, x.shape[-1])]
        assert max(per_token) <= 2**bits


def test_kv_quant_rounds_keys_and_values_per_head(tiny, monkeypatch):
    seen = []
    real = transforms.sdpa_attention_forward

    def spy(module, q, k, v, *args, **kwargs):
        seen.append((k, v))
        return real(module, q, k, v, *args, **kwargs)

    monkeypatch.setattr(transforms, "sdpa_attention_forward", spy)
    run_pipeline(tiny, parse_pipeline("actquant:bits=16,kv_bits=3"), progress=False)
    _logits(tiny)
    assert len(seen) == 2
    for k, v in seen:
        for t in (k, v):  # (batch, kv heads, tokens, head_dim): one grid per token and head
            assert max(len(row.unique()) for row in t.reshape(-1, t.shape[-1])) <= 8


def test_rotation_after_pruning_is_refused_with_the_reason(tiny):
    with pytest.raises(OrderError, match="pruned zeros become dense"):
        check_pipeline(tiny, parse_pipeline("magnitude:ratio=0.3 > rotate").steps)
    with pytest.raises(OrderError, match="force=true"):
        check_pipeline(tiny, parse_pipeline("rtn:bits=4 > rotate").steps)
    with pytest.raises(ConfigError, match="already rotated"):
        check_pipeline(tiny, parse_pipeline("rotate > quarot:weights=rtn").steps)
    check_pipeline(tiny, parse_pipeline("sleb:blocks=1,keep_first=0,keep_last=0 > rotate").steps)


def test_forced_rotation_drops_the_sparsity_and_says_so(tiny):
    with pytest.warns(UserWarning, match="dropped the masks"):
        result = run_pipeline(
            tiny, parse_pipeline("magnitude:ratio=0.5 > rotate:force=true"), progress=False
        )
    assert result.records[1].sparsity == 0 and "30" not in result.records[1].notes[0]
    assert not tiny.state.units
    w = get_weight(tiny.model.model.layers[0].mlp.up_proj)
    assert (w == 0).float().mean() < 0.01  # the zeros became dense


def test_pruning_after_rotation_sees_rotated_weights(tiny):
    run_pipeline(tiny, parse_pipeline("rotate"), progress=False)
    rotated = get_weight(tiny.model.model.layers[1].mlp.down_proj)
    run_pipeline(tiny, parse_pipeline("magnitude:ratio=0.5 > rtn:bits=4"), progress=False)
    for name, module in compressible_units(tiny.model).items():
        c = tiny.state.get(name)
        w = get_weight(module)
        assert int((~c.mask).sum()) == w.numel() // 2
        assert (w[~c.mask] == 0).all() and c.grid.contains(w)
    mask = tiny.state.get("model.layers.1.mlp.down_proj").mask
    kept = rotated.abs()[mask].min()
    assert kept >= rotated.abs()[~mask].max()  # magnitude chose among the rotated weights


@pytest.mark.parametrize("weights", ["rtn", "gptq"])
def test_quarot_preset_quantizes_weights_activations_and_kv(tiny, weights):
    calibration = CalibrationSpec("austen:pride", 8, 128, 0)
    pipeline = parse_pipeline(f"quarot:weights={weights},preset=W4A4KV4")
    record = run_pipeline(tiny, pipeline, calibration, progress=False).records[0]
    assert record.bits == 4 and record.units == 14
    assert record.details["activations"]["bits"] == 4
    assert record.details["activations"]["kv_bits"] == 4
    for name, module in compressible_units(tiny.model).items():
        assert tiny.state.get(name).grid.contains(get_weight(module)), name
    assert torch.isfinite(_logits(tiny)).all()


def test_rotated_quantized_model_saves_and_loads(tiny, tmp_path):
    from pqorder.artifacts import save_compressed

    run_pipeline(tiny, parse_pipeline("rotate > actquant:bits=8,kv_bits=8"), progress=False)
    expected = _logits(tiny)
    tiny.model.config.num_hidden_layers = 2
    save_compressed(tiny, tmp_path / "out", {}, overwrite=False)
    loaded = load_model(str(tmp_path / "out"))
    assert loaded.state.model.rotation is not None
    assert torch.allclose(_logits(loaded), expected, atol=1e-4)


def test_rotation_names_an_unsupported_model_type():
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    lm = LoadedModel("gpt2-tiny", model, None)
    with pytest.raises(ConfigError, match="; gpt2 uses LayerNorm with bias"):
        check_pipeline(lm, parse_pipeline("rotate").steps)
    with pytest.raises(ConfigError, match="; gpt2 fuses q/k/v"):
        check_pipeline(lm, parse_pipeline("structured:target=heads").steps)
