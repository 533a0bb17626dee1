"""Device, dtype and offload: grids exact in half precision, statistics in float32, the offload
path identical to the plain one, and every bad placement refused before a model is loaded."""

from __future__ import annotations

import pytest
import torch

from pqorder.engine import apply_step
from pqorder.errors import ConfigError
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.hardware import Placement, resolve_hardware
from pqorder.layerwise import calibrated_units
from pqorder.models.adapter import compressible_units, decoder_blocks, get_weight
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_step
from pqorder.snapshot import restore_snapshot, take_snapshot

SMALL = PerplexityProtocol("austen:emma", seqlen=256, max_tokens=512, batch_size=2)

HALF = [torch.bfloat16, torch.float16]


def _two_blocks(placement: Placement):
    lm = load_model("smollm2-135m", placement)
    del lm.model.model.layers[2:]
    lm.model.config.num_hidden_layers = 2
    return lm


@pytest.fixture(scope="module", params=HALF, ids=["bfloat16", "float16"])
def half(request):
    lm = _two_blocks(Placement(dtype=request.param))
    return lm, take_snapshot(lm)


def _apply(lm, texts, tokens):
    for text in texts:
        apply_step(lm, parse_step(text), tokens, progress=False)


@pytest.mark.parametrize(
    "pipeline",
    [
        ["rtn:bits=8"],  # asymmetric per channel: codes up to ±255, beyond bf16's 8-bit precision
        ["gptq:bits=4,group=128,sym=true"],
        ["sparsegpt:ratio=0.5", "rtn:bits=4,group=64"],
        ["gptq:bits=3", "sparsegpt:ratio=0.3"],
    ],
)
def test_half_precision_grids_are_exact(half, tiny_calibration, pipeline):
    lm, dense = half
    restore_snapshot(lm, dense)
    dtype = lm.placement.dtype
    _apply(lm, pipeline, tiny_calibration)
    for name, module in compressible_units(lm.model).items():
        assert module.weight.dtype == dtype, name
        c = lm.state.get(name)
        w = get_weight(module)
        assert c.grid.contains(w, dtype=dtype), name
        # A value on the grid stays on it: projecting again and casting is the identity.
        assert torch.equal(c.grid.project(w).to(dtype), module.weight.detach()), name
        if c.mask is not None:
            assert (w[~c.mask] == 0).all(), name
    # The fp32 tolerance check is not the half-precision one: casting moved the values.
    some = next(iter(compressible_units(lm.model).items()))
    assert not lm.state.get(some[0]).grid.contains(get_weight(some[1]), rtol=1e-7)


def test_half_precision_statistics_and_perplexity(half, tiny, tiny_calibration):
    lm, dense = half
    restore_snapshot(lm, dense)
    units = compressible_units(lm.model)
    _name, _module, stats = next(iter(calibrated_units(lm.model, units, tiny_calibration[:2])))
    assert stats.hessian.dtype == torch.float32  # whatever the model dtype
    assert lm.model.model.embed_tokens.weight.dtype == lm.placement.dtype
    half_ppl = evaluate_perplexity(lm.model, lm.tokenizer, SMALL, progress=False)
    full_ppl = evaluate_perplexity(tiny.model, tiny.tokenizer, SMALL, progress=False)
    assert half_ppl.perplexity == pytest.approx(full_ppl.perplexity, rel=0.05)


def test_offloaded_compression_is_identical(tiny, tiny_calibration):
    """The offload path (blocks pinned one at a time, moved in and out by hooks while the model
    runs) gives bit-identical weights and perplexity to the plain path; on CPU host and device
    coincide, a GPU test checks real movement."""
    offloaded = _two_blocks(Placement(offload=True))
    pipeline = ["sparsegpt:ratio=0.5", "gptq:bits=4,group=128", "sleb:blocks=1,keep_first=0"]
    _apply(tiny, pipeline[:2], tiny_calibration)
    _apply(offloaded, pipeline[:2], tiny_calibration)
    plain = tiny.model.state_dict()
    for key, value in offloaded.model.state_dict().items():
        assert torch.equal(value, plain[key]), key
    a = evaluate_perplexity(tiny.model, tiny.tokenizer, SMALL, progress=False)
    b = evaluate_perplexity(offloaded.model, offloaded.tokenizer, SMALL, progress=False)
    assert a.perplexity == b.perplexity
    _, blocks = decoder_blocks(offloaded.model)
    assert all(len(b._forward_pre_hooks) >= 1 for b in blocks)  # moved in by hooks when run


def test_placement_changes_run_keys_only_when_numerics_change(tmp_path, dense_tiny):
    from pqorder.study import Study

    protocol = SMALL
    lm = _two_blocks(Placement(offload=True))
    offloaded = Study(lm, protocol).run_key([parse_step("rtn")])
    lm.placement = Placement()
    plain = Study(lm, protocol).run_key([parse_step("rtn")])
    lm.placement = Placement(dtype=torch.bfloat16)
    half = Study(lm, protocol).run_key([parse_step("rtn")])
    assert offloaded == plain != half


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("cuda", "auto", "no CUDA GPU"),
        ("cuda:3", "float32", "no CUDA GPU"),
        ("meta", "auto", "unknown --device 'meta'"),
        ("gpu0", "auto", "unknown --device"),
        ("cpu", "float64", "unknown --dtype 'float64'"),
        ("cpu", "int8", "unknown --dtype"),
    ],
)
def test_bad_placement_is_one_line(device, dtype, message):
    if torch.cuda.is_available() and device.startswith("cuda"):
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match=message) as err:
        resolve_hardware(device, dtype)
    assert "\n" not in str(err.value)


def test_cli_refuses_a_missing_gpu_before_loading(inline):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = inline("eval", "-m", "no-such-model", "--device", "cuda")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: --device cuda: this machine has no CUDA GPU; use cpu"
    ]
