"""The layer-wise walk on real SmolLM2 blocks: statistics, grouping, propagation, NaN stops."""

import pytest
import torch

from pqorder.engine import apply_step
from pqorder.errors import ConfigError, PqorderError
from pqorder.layerwise import calibrated_units
from pqorder.models.adapter import compressible_units
from pqorder.pipeline import parse_pipeline, parse_step, run_pipeline


def _brute_force_hessians(lm, tokens):
    """2/n XᵀX of every unit's input from one plain forward pass of the whole model."""
    inputs: dict[str, list] = {}
    handles = [
        m.register_forward_hook(lambda _m, a, _o, n=name: inputs.setdefault(n, []).append(a[0]))
        for name, m in compressible_units(lm.model).items()
    ]
    with torch.no_grad():
        lm.model(input_ids=tokens, use_cache=False)
    for h in handles:
        h.remove()
    out = {}
    for name, xs in inputs.items():
        x = torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double()
        out[name] = (2 / x.shape[0] * x.t() @ x).float()
    return out


def test_hessians_match_a_plain_forward(tiny, tiny_calibration):
    expected = _brute_force_hessians(tiny, tiny_calibration)
    walk = calibrated_units(
        tiny.model,
        compressible_units(tiny.model),
        tiny_calibration,
        batch_size=3,
        progress=False,
    )
    seen = 0
    for name, _module, stats in walk:  # nothing is compressed: block 1 sees dense inputs
        assert stats.n_tokens == tiny_calibration.numel()
        torch.testing.assert_close(stats.hessian, expected[name], rtol=1e-3, atol=1e-3)
        seen += 1
    assert seen == 14


def test_sequential_groups_follow_the_forward_order(tiny, tiny_calibration):
    walk = calibrated_units(
        tiny.model,
        compressible_units(tiny.model),
        tiny_calibration,
        sequential=True,
        progress=False,
    )
    names = [name.split(".", 3)[3] for name, _m, _s in walk][:7]
    assert names == [
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    ]


def test_later_blocks_see_compressed_outputs(tiny, tiny_calibration):
    """Block 1's statistics change when block 0 was compressed before it in the walk."""
    dense = _brute_force_hessians(tiny, tiny_calibration)
    walk = calibrated_units(
        tiny.model, compressible_units(tiny.model), tiny_calibration, progress=False
    )
    for name, module, stats in walk:
        if ".layers.0." in name:
            module.weight.data.mul_(0.5)
        elif name.endswith("layers.1.self_attn.q_proj"):
            assert not torch.allclose(stats.hessian, dense[name], rtol=1e-2)


def test_sequential_and_parallel_both_reach_the_target(tiny, tiny_calibration):
    step = parse_step("sparsegpt:ratio=0.5")
    rec = apply_step(tiny, step, tiny_calibration, progress=False, sequential=True)
    assert rec.sparsity == pytest.approx(0.5, abs=1e-4)


def test_calibrated_method_without_data_is_refused(tiny):
    with pytest.raises(ConfigError, match="needs calibration"):
        apply_step(tiny, parse_step("wanda:ratio=0.5"), None, progress=False)


def test_nan_in_activations_stops_with_the_block_name(tiny, tiny_calibration):
    norm = tiny.model.model.layers[0].post_attention_layernorm.weight
    saved = norm.detach().clone()
    try:
        with torch.no_grad():
            norm[0] = float("nan")
        with pytest.raises(PqorderError, match=r"NaN/Inf in the outputs of block model\.layers\.0"):
            apply_step(tiny, parse_step("wanda:ratio=0.5"), tiny_calibration, progress=False)
    finally:
        with torch.no_grad():
            norm.copy_(saved)


def test_calibration_longer_than_context_is_refused(tiny):
    from pqorder.data.calibration import CalibrationSpec

    spec = CalibrationSpec("austen:pride", 1, 10_000)
    with pytest.raises(ConfigError, match="context"):
        run_pipeline(tiny, parse_pipeline("gptq:bits=4"), spec, progress=False)
