"""Structured head/channel pruning removes whole groups (zeroed rows/columns, shapes kept)."""

import pytest
import torch

from pqorder.engine import apply_step
from pqorder.models.adapter import get_weight
from pqorder.pipeline import parse_pipeline, parse_step, run_pipeline

HD = 64


def _heads_zeroed(block):
    wq, wo = get_weight(block.self_attn.q_proj), get_weight(block.self_attn.o_proj)
    rows = (wq.view(-1, HD, wq.shape[1]) == 0).flatten(1).all(1)
    cols = (wo.view(wo.shape[0], -1, HD) == 0).permute(1, 0, 2).flatten(1).all(1)
    return rows, cols


@pytest.mark.parametrize("score", ["magnitude", "activation"])
def test_heads_pruned_whole(tiny, tiny_calibration, score):
    step = parse_step(f"structured:target=heads,ratio=0.34,score={score}")
    record = apply_step(tiny, step, tiny_calibration, progress=False)
    for block in tiny.model.model.layers:
        rows, cols = _heads_zeroed(block)
        assert int(rows.sum()) == 3 and torch.equal(rows, cols)  # round(0.34 × 9) heads
        assert rows.view(3, 3).sum(1).tolist() == [1, 1, 1]  # one per KV group of 3
    assert record.granularity == "attention head" and record.units == 4


def test_heads_spread_evenly_over_kv_groups(tiny):
    """round(0.45 × 9) = 4 heads over 3 KV groups: one each, the fourth in one group."""
    apply_step(tiny, parse_step("structured:target=heads,ratio=0.45"), progress=False)
    for block in tiny.model.model.layers:
        rows, _ = _heads_zeroed(block)
        assert sorted(rows.view(3, 3).sum(1).tolist()) == [1, 1, 2]


@pytest.mark.parametrize("score", ["magnitude", "activation"])
def test_channels_pruned_whole_and_stay_pruned(tiny, tiny_calibration, score):
    step = parse_step(f"structured:target=channels,ratio=0.25,score={score}")
    apply_step(tiny, step, tiny_calibration, progress=False)
    apply_step(tiny, parse_step("rtn:bits=4"), progress=False)
    for block in tiny.model.model.layers:
        gate, up = get_weight(block.mlp.gate_proj), get_weight(block.mlp.up_proj)
        down = get_weight(block.mlp.down_proj)
        dead = (gate == 0).all(1)
        assert int(dead.sum()) == 384
        assert torch.equal(dead, (up == 0).all(1)) and torch.equal(dead, (down == 0).all(0))


def test_scores_differ_between_magnitude_and_activation(tiny, tiny_calibration, dense_tiny):
    from pqorder.snapshot import restore_snapshot

    chosen = []
    for score in ("magnitude", "activation"):
        restore_snapshot(tiny, dense_tiny)
        step = parse_step(f"structured:target=channels,ratio=0.25,score={score}")
        apply_step(tiny, step, tiny_calibration, progress=False)
        chosen.append((get_weight(tiny.model.model.layers[1].mlp.gate_proj) == 0).all(1))
    assert not torch.equal(*chosen)


def test_channels_after_rotation_zero_the_channel_outputs(tiny):
    run_pipeline(tiny, parse_pipeline("rotate > structured:ratio=0.25"), progress=False)
    mlp = tiny.model.model.layers[0].mlp
    dead = (get_weight(mlp.gate_proj) == 0).all(1)
    assert int(dead.sum()) == 384
    seen = {}

    def keep(_module, args):
        seen["x"] = args[0].detach()

    mlp.down_proj.register_forward_pre_hook(keep, prepend=True)
    with torch.no_grad():
        tiny.model(input_ids=torch.arange(100, 132).view(1, -1))
    assert (seen["x"][..., dead] == 0).all()  # channel space, before the online Hadamard


def test_bad_structured_settings_and_models_fail_before_work():
    from transformers import GPT2Config, GPT2LMHeadModel

    from pqorder.core import LoadedModel
    from pqorder.engine import check_pipeline
    from pqorder.errors import ConfigError

    for bad, message in [
        ("structured:ratio=1", r"\[0, 1\)"),
        ("structured:target=filters", "'heads' or 'channels'"),
        ("structured:score=random", "'magnitude' or 'activation'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_pipeline(bad)
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(ConfigError, match=r"structured needs .*; gpt2 fuses q/k/v"):
        check_pipeline(LoadedModel("gpt2-tiny", model, None), parse_pipeline("structured").steps)
