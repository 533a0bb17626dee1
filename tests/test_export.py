"""Export round trips: each format is loaded by its consumer library and compared with pqorder.

Tolerances. compressed-tensors and GGUF Q8_0 store pqorder's own codes and scales, and the
consumer rebuilds each weight as ``scale · q`` in the same precision pqorder used, so weights
are compared for exact equality; logits may differ only through a different order of float
additions in the consumer's kernels, so they get an absolute tolerance of 1e-4 on logits of
magnitude ~60 (float32 rounding of 576-wide sums is ~1e-5 at that size).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from pqorder.cli import app
from pqorder.core import LoadedModel
from pqorder.data.calibration import CalibrationSpec
from pqorder.errors import ConfigError
from pqorder.export import export_model
from pqorder.export.footprint import measure
from pqorder.export.gguf import BLOCK_NAMES as GGUF_NAMES
from pqorder.models.adapter import compressible_units, get_weight, set_weight
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline, run_pipeline
from pqorder.state import ActivationQuant, Rotation

CALIB = CalibrationSpec("austen:pride", 8, 64, 0)
TEXT = "It is a truth universally acknowledged, that a single man in possession of a fortune"
LOGIT_ATOL = 1e-4


def _compress(lm: LoadedModel, pipeline: str) -> LoadedModel:
    run_pipeline(lm, parse_pipeline(pipeline), CALIB, progress=False)
    return lm


def _ids(lm: LoadedModel) -> torch.Tensor:
    return lm.tokenizer(TEXT, return_tensors="pt", add_special_tokens=False).input_ids


@torch.no_grad()
def _logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    return model(ids).logits


def _dir_bytes(path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _distinct_per_group(w: torch.Tensor, group: int) -> int:
    """The largest number of distinct values in any (row, group) of an (out, in) weight."""
    pad = -w.shape[1] % group  # padding repeats the last value: no new distinct value
    w = torch.cat([w, w[:, -1:].expand(-1, pad)], dim=1)
    blocks = w.reshape(w.shape[0], -1, group).sort(dim=2).values
    return int(((blocks.diff(dim=2) != 0).sum(dim=2) + 1).max())


def _load_ct(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


@pytest.mark.slow
def test_compressed_tensors_int4_groups_sparse_roundtrip(tiny, tmp_path):
    """50% magnitude then int4 g128 RTN: transformers loads the packed checkpoint through
    compressed-tensors and gets pqorder's weights bit for bit (576-wide rows, whose last
    group of 128 is partial, are written as groups of 64 with repeated scales)."""
    lm = _compress(tiny, "magnitude:ratio=0.5 > rtn:bits=4,group=128,sym=true")
    ids = _ids(lm)
    expected = _logits(lm.model, ids)
    out = export_model(lm, "compressed-tensors", tmp_path / "ct").path
    dense = tmp_path / "dense"
    lm.model.save_pretrained(dense)
    loaded = _load_ct(out)
    got = _logits(loaded, ids)
    assert (got - expected).abs().max().item() <= LOGIT_ATOL
    exported = dict(loaded.named_modules())
    for name, unit in compressible_units(lm.model).items():
        w, back = get_weight(unit), exported[name].weight.detach()
        assert torch.equal(back, w), name
        mask = lm.state.get(name).mask
        assert bool((back[~mask] == 0).all()), f"{name}: pruned weights are not exact zeros"
        assert _distinct_per_group(back, 128) <= 16, name
    # Two blocks are a small share of the file next to the fp32 embedding (28 M of 35 M
    # parameters); the packed units themselves must be near 4.25/32 of their fp32 size.
    assert _dir_bytes(out) < _dir_bytes(dense)
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        packed = sum(
            f.get_tensor(k).numel() * f.get_tensor(k).element_size()
            for k in f.keys()  # noqa: SIM118 (safe_open has keys(), no iteration)
            if k.endswith(("weight_packed", "weight_scale"))
        )
    fp32 = sum(u.weight.numel() * 4 for u in compressible_units(lm.model).values())
    assert packed / fp32 < 0.16


@pytest.mark.slow
def test_compressed_tensors_int8_per_channel(tiny, tmp_path):
    lm = _compress(tiny, "magnitude:ratio=0.3 > rtn:bits=8,sym=true")
    ids = _ids(lm)
    expected = _logits(lm.model, ids)
    loaded = _load_ct(export_model(lm, "compressed-tensors", tmp_path / "ct8").path)
    assert (_logits(loaded, ids) - expected).abs().max().item() <= LOGIT_ATOL
    name, unit = next(iter(compressible_units(lm.model).items()))
    back = dict(loaded.named_modules())[name].weight.detach()
    assert torch.equal(back, get_weight(unit))
    assert _distinct_per_group(back, back.shape[1]) <= 256
    f = measure(tmp_path / "ct8", "compressed-tensors", seqlen=16)
    assert f.parameters == _n_params(lm.model)
    assert f.disk_bytes == sum(p.stat().st_size for p in (tmp_path / "ct8").iterdir())
    # fp32 embedding (28.3 M params) + 3.3 M int8 unit weights with fp32 per-row scales.
    assert 25 < f.bits_per_weight < 30 and f.tokens_per_second > 0


@pytest.mark.parametrize(
    ("fmt", "out", "pipeline", "message"),
    [
        ("compressed-tensors", "ct", "rtn:bits=4,group=128", "sym=true"),
        ("compressed-tensors", "ct", "rtn:bits=3,group=128,sym=true", "holds 4 and 8 bits only"),
        ("compressed-tensors", "ct", "magnitude:ratio=0.3", "no unit of this model is quantized"),
        ("gguf", "m.gguf", "rtn:bits=4,group=128", "asymmetric"),
        (
            "gguf",
            "m.gguf",
            "rtn:bits=4,group=48,sym=true",
            "does not map onto GGUF's 32-wide blocks",
        ),
        ("gguf", "m.gguf", "rtn:bits=6,group=64,sym=true", "holds 4 and 8 bits only"),
    ],
)
def test_refusals_write_nothing(tiny, tmp_path, fmt, out, pipeline, message):
    lm = _compress(tiny, pipeline)
    with pytest.raises(ConfigError, match=message):
        export_model(lm, fmt, tmp_path / out)
    assert list(tmp_path.iterdir()) == []


def test_online_rotation_and_activation_quant_refused(tiny, tmp_path):
    lm = _compress(tiny, "rtn:bits=4,group=64,sym=true")
    lm.state.model.rotation = Rotation("hadamard", 0, online=True)
    with pytest.raises(ConfigError, match="online Hadamard"):
        export_model(lm, "compressed-tensors", tmp_path / "ct")
    lm.state.model.rotation = None
    lm.state.model.activations = ActivationQuant(bits=8, clip=1.0, kv_bits=4, kv_clip=1.0)
    with pytest.raises(ConfigError, match="unit inputs, KV cache"):
        export_model(lm, "compressed-tensors", tmp_path / "ct")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_offline_rotation_exports_fused_into_the_weights(tiny, tmp_path):
    """QuaRot with online=false, then int4 g64: the rotation lives in the weights (and the
    untied output head), so compressed-tensors loads pqorder's exact model and the GGUF file
    gives its logits up to the fp16 block scales (0.05, as for Q4_0 above)."""
    from transformers import AutoModelForCausalLM

    lm = _compress(tiny, "rotate:online=false > rtn:bits=4,group=64,sym=true")
    ids = _ids(lm)
    want = _logits(lm.model, ids)
    ct = export_model(lm, "compressed-tensors", tmp_path / "ct").path
    got = _logits(AutoModelForCausalLM.from_pretrained(ct).eval(), ids)
    assert (got - want).abs().max().item() <= LOGIT_ATOL
    gguf = export_model(lm, "gguf", tmp_path / "m.gguf").path
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=gguf.name).eval()
    assert (_logits(loaded, ids) - want).abs().max().item() <= 0.05


def test_unknown_format_and_existing_output(tiny, tmp_path):
    with pytest.raises(ConfigError, match="unknown export format 'onnx'"):
        export_model(tiny, "onnx", tmp_path / "x")
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="--overwrite"):
        export_model(tiny, "compressed-tensors", tmp_path / "taken")


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-m", "pqorder", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.slow
def test_cli_compress_export_then_export_command(tiny_dir, tmp_path):
    """``compress --export`` (the console script) writes OUT-FORMAT beside OUT; ``export``
    refuses bad input before writing anything; the export loads with pqorder's logits."""
    out = tmp_path / "c"
    pipeline = "magnitude:ratio=0.3 > rtn:bits=4,group=64,sym=true"
    res = _cli("compress", "-m", str(tiny_dir), "-p", pipeline, "--no-eval", "-o", str(out),
               "--export", "compressed-tensors")  # fmt: skip
    assert res.returncode == 0, res.stderr
    exported = tmp_path / "c-compressed-tensors"
    runner = CliRunner()
    bad = [
        (["-f", "onnx", "-o", str(tmp_path / "y")], "unknown export format 'onnx'"),
        (["-f", "compressed-tensors", "-o", str(exported)], "--overwrite"),
    ]
    for args, message in bad:  # in process: the checks themselves (main() prints one line)
        res = runner.invoke(app, ["export", str(out), *args])
        assert isinstance(res.exception, ConfigError) and message in str(res.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c-compressed-tensors"]
    args = ["export", str(out), "-f", "compressed-tensors", "-o", str(exported), "--overwrite",
            "--no-measure"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lm = load_model(str(out))
    ids = _ids(lm)
    got = _logits(_load_ct(exported), ids)
    assert (got - _logits(lm.model, ids)).abs().max().item() <= LOGIT_ATOL
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def _gguf_reference(lm: LoadedModel) -> dict[str, torch.Tensor]:
    """What GGUF must hold for each quantized unit: pqorder's codes times its scale rounded to
    fp16 (GGUF's block scale type), in pqorder's (HF) row order."""
    expected = {}
    for name, unit in compressible_units(lm.model).items():
        grid = lm.state.get(name).grid
        w = get_weight(unit)
        half = 2 ** (grid.bits - 1)
        scale16 = grid.expand(grid.scale, w.shape[1]).half().float()
        expected[name] = scale16 * (grid.codes(w) - half).float()
    return expected


def _unpermute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)


def _read_gguf(path, lm: LoadedModel) -> dict[str, torch.Tensor]:
    """Every block weight in the file, dequantized by the gguf package, HF names and order."""
    from gguf import GGUFReader
    from gguf.quants import dequantize

    config = lm.model.config
    heads = {"attn_q": config.num_attention_heads, "attn_k": config.num_key_value_heads}
    short = {v: k for k, v in GGUF_NAMES.items()}
    out = {}
    for t in GGUFReader(str(path)).tensors:
        parts = t.name.split(".")
        if parts[0] != "blk" or parts[2] not in short or parts[2].endswith("norm"):
            continue
        w = torch.from_numpy(dequantize(t.data, t.tensor_type).copy()).float()
        if parts[2] in heads:
            w = _unpermute(w, heads[parts[2]])
        out[f"model.layers.{parts[1]}.{short[parts[2]]}"] = (w, t.tensor_type.name)
    return out


@pytest.mark.slow
def test_gguf_q4_0_sparse_roundtrip_through_transformers(tiny, tmp_path):
    """Q4_0 from a 30%-sparse int4 g128 grid: the file holds pqorder's codes with fp16 scales,
    zeros stay exact zeros, and transformers' GGUF loader gives the same logits as pqorder's
    model with its scales rounded to fp16 (1e-4) and within 0.05 of the unrounded one (each
    weight moves by ≤ 2^-11 of its value; measured 0.01 on logits of magnitude ~60)."""
    from transformers import AutoModelForCausalLM

    lm = _compress(tiny, "magnitude:ratio=0.3 > rtn:bits=4,group=128,sym=true")
    ids = _ids(lm)
    unrounded = _logits(lm.model, ids)
    out = export_model(lm, "gguf", tmp_path / "m.gguf").path
    expected = _gguf_reference(lm)
    stored = _read_gguf(out, lm)
    assert set(stored) == set(expected)
    for name, (w, kind) in stored.items():
        assert kind == "Q4_0"
        assert torch.equal(w, expected[name]), name
        assert bool((w[~lm.state.get(name).mask] == 0).all())
        assert _distinct_per_group(w, 128) <= 16
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=out.name).eval()
    units = compressible_units(lm.model)
    for name, module in dict(loaded.named_modules()).items():
        if name in units:
            assert torch.equal(module.weight.detach(), expected[name]), name
            set_weight(units[name], expected[name])
    got = _logits(loaded, ids)
    assert (got - _logits(lm.model, ids)).abs().max().item() <= LOGIT_ATOL
    assert (got - unrounded).abs().max().item() <= 0.05


def test_gguf_q8_0_per_channel_holds_pqorder_codes(tiny, tmp_path):
    lm = _compress(tiny, "rtn:bits=8,sym=true")
    out = export_model(lm, "gguf", tmp_path / "m8.gguf").path
    expected = _gguf_reference(lm)
    for name, (w, kind) in _read_gguf(out, lm).items():
        assert kind == "Q8_0" and torch.equal(w, expected[name]), name
    dense = sum(u.weight.numel() * 4 for u in compressible_units(lm.model).values())
    embedding = lm.model.get_input_embeddings().weight.numel() * 4
    # Q8_0 = 34 bytes per 32 weights: 8.5 bits per weight (plus the F32 embedding and norms).
    assert out.stat().st_size < embedding + dense * 8.5 / 32 + 3_000_000


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_dense_slices_pruned_mlp_channels(tiny, tmp_path):
    """25% of MLP channels pruned (then int8): the dense export has intermediate_size 1152,
    fewer parameters, and plain transformers gives pqorder's logits (1e-4: only exact-zero
    terms leave the sums)."""
    from transformers import AutoModelForCausalLM

    lm = _compress(tiny, "structured:target=channels,ratio=0.25 > rtn:bits=8,sym=true")
    ids = _ids(lm)
    done = export_model(lm, "dense", tmp_path / "d")
    assert any("1536 → 1152" in n for n in done.notes)
    loaded = AutoModelForCausalLM.from_pretrained(done.path).eval()
    assert loaded.config.intermediate_size == 1152
    removed = 2 * 3 * 384 * 576  # 2 blocks × (gate rows, up rows, down columns) × 384 × 576
    assert _n_params(loaded) == _n_params(lm.model) - removed
    assert (_logits(loaded, ids) - _logits(lm.model, ids)).abs().max().item() <= LOGIT_ATOL


@pytest.mark.slow
def test_dense_slices_pruned_attention_heads(tiny, tmp_path):
    """A third of the heads pruned (one per KV group, then int8): the export has 6 query heads
    over 3 KV heads, fewer parameters, pqorder's logits."""
    from transformers import AutoModelForCausalLM

    lm = _compress(tiny, "structured:target=heads,ratio=0.34 > rtn:bits=8,sym=true")
    ids = _ids(lm)
    done = export_model(lm, "dense", tmp_path / "h")
    assert any("9 query / 3 KV → 6 / 3" in n for n in done.notes)
    loaded = AutoModelForCausalLM.from_pretrained(done.path).eval()
    assert (loaded.config.num_attention_heads, loaded.config.num_key_value_heads) == (6, 3)
    removed = 2 * 2 * 3 * 64 * 576  # 2 blocks × (q rows, o columns) × 3 heads × 64 × 576
    assert _n_params(loaded) == _n_params(lm.model) - removed
    assert (_logits(loaded, ids) - _logits(lm.model, ids)).abs().max().item() <= LOGIT_ATOL


def test_dense_keeps_heads_that_cannot_be_sliced(tiny, tmp_path):
    """2 of 9 heads pruned: some KV group keeps all 3 of its heads, so none can go; the note
    says so and the head counts stay."""
    lm = _compress(tiny, "structured:target=heads,ratio=0.25")
    done = export_model(lm, "dense", tmp_path / "d")
    assert any("stay as zero rows" in n for n in done.notes)
    config = json.loads((done.path / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"]) == (9, 3)


@pytest.mark.slow
def test_dense_after_sleb_has_fewer_blocks(_tiny_session, tmp_path):
    """SLEB on a four-block slice removes one block; the export is a 3-block LLaMA."""
    from transformers import AutoModelForCausalLM

    lm = load_model("smollm2-135m")
    del lm.model.model.layers[4:]
    lm.model.config.num_hidden_layers = 4
    lm = _compress(lm, "sleb:blocks=1")
    ids = _ids(lm)
    done = export_model(lm, "dense", tmp_path / "s")
    loaded = AutoModelForCausalLM.from_pretrained(done.path).eval()
    assert loaded.config.num_hidden_layers == 3 and len(loaded.model.layers) == 3
    assert (_logits(loaded, ids) - _logits(lm.model, ids)).abs().max().item() <= LOGIT_ATOL


def _dead(lm: LoadedModel, name: str) -> torch.Tensor:
    return ~lm.state.get(name).mask.any(dim=1)


def test_dense_cnn_cuts_pruned_filters_of_digits_cnn(tmp_path):
    """digits-cnn (blocks 8→8 with an identity skip, 8→16 with a conv shortcut), 25% of the
    filters pruned with BatchNorm re-estimation: the export has fewer parameters, and both
    ``load_model(dir)`` and the plain torch.export program give pqorder's logits (1e-4 on
    logits of magnitude ~10: folding the pruned channels' BatchNorm constants only reorders
    float sums, measured 2e-6) and the same top-1 on the 360 test images."""
    from pqorder.data.images import load_images
    from pqorder.models.zoo import top1

    lm = load_model("digits-cnn")
    calib = CalibrationSpec("digits:train", 64, 512, 0)
    run_pipeline(lm, parse_pipeline("filters:ratio=0.25,bn=true"), calib, progress=False)
    done = export_model(lm, "dense", tmp_path / "d")
    # conv1: floor(0.25·width) filters always cut; block 1's conv2 filter j only when its
    # shortcut filter j is pruned too (then the channel is a constant the head folds in).
    joint = int((_dead(lm, "blocks.1.conv2") & _dead(lm, "blocks.1.shortcut.0")).sum())
    assert any(f"blocks.0.conv1 2/8, blocks.1.conv1 4/16, blocks.1.conv2 {joint}/16" in n
               for n in done.notes)  # fmt: skip
    assert any("blocks.0.conv2 2" in n for n in done.notes)  # identity skip: stays
    # block 0: 2 conv1 filters (8·9 each), 4 bn1 entries, 2 conv2 input channels (8·9 each);
    # block 1: 4 conv1 filters (8·9), 8 bn1 entries, 4 conv2 inputs (16·9); per joint channel
    # a conv2 row (12·9 left after the cut), 2 bn2 + 2 shortcut-bn entries, a shortcut row (8)
    # and a head column (10).
    removed = (2 * 72 + 4 + 2 * 72) + (4 * 72 + 8 + 4 * 144) + joint * (108 + 4 + 8 + 10)
    back = load_model(str(done.path))
    assert _n_params(back.model) == _n_params(lm.model) - removed == 3958 - 130 * joint
    program = torch.export.load(str(done.path / "model.pt2")).module()
    test = load_images("digits:test")
    with torch.no_grad():
        expected = lm.model(test.images)
        for model in (back.model, program):
            assert (model(test.images) - expected).abs().max().item() <= LOGIT_ATOL
    acc = top1(lm.model, test.images, test.labels)
    assert top1(back.model, test.images, test.labels) == acc > 0.5  # measured 0.72 (dense 0.98)


def test_cli_compress_export_records_the_footprint(tmp_path):
    """``compress --export dense`` on digits-cnn files the measured footprint of the export
    in the run store: the torch.export program's bytes, the reduced parameter count."""
    from pqorder.store import RunStore

    out, db = tmp_path / "c", tmp_path / "runs.db"
    args = ["compress", "-m", "digits-cnn", "-p", "filters:ratio=0.25,bn=true", "--no-eval",
            "-o", str(out), "--export", "dense", "--store", str(db), "--study", "x"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    (entry,) = RunStore(db).analyses("x")
    f = entry["payload"]
    program = tmp_path / "c-dense" / "model.pt2"
    assert entry["kind"] == "export" and f["source"] == "digits-cnn" and f["format"] == "dense"
    assert f["disk_bytes"] == program.stat().st_size and f["tokens_per_second"] is None
    assert f["parameters"] == _n_params(load_model(str(tmp_path / "c-dense")).model) < 5122
    assert f["bits_per_weight"] == pytest.approx(8 * f["disk_bytes"] / f["parameters"])


def test_dense_cnn_three_blocks_folds_constants_into_the_next_block(tmp_path):
    """fmnist-cnn's architecture (untrained, random BatchNorm statistics so that pruned
    channels carry nonzero constants): block 1's cut output channels feed block 2's conv1 and
    conv shortcut, whose fixed maps take the constants; outputs equal within 1e-4."""
    from pqorder.engine import apply_step
    from pqorder.models.zoo import RECIPES
    from pqorder.pipeline import parse_step

    torch.manual_seed(0)
    model = RECIPES["fmnist-cnn"].build()
    model.arch = "fmnist-cnn"
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.data.normal_()
        bn.running_var.data.uniform_(0.5, 2.0)
    lm = LoadedModel("fmnist-cnn", model.eval(), None, kind="vision")
    apply_step(lm, parse_step("filters:ratio=0.5"), progress=False)
    done = export_model(lm, "dense", tmp_path / "f")
    joint = int((_dead(lm, "blocks.1.conv2") & _dead(lm, "blocks.1.shortcut.0")).sum())
    assert joint > 0 and any(f"blocks.1.conv2 {joint}/32" in n for n in done.notes)
    back = load_model(str(done.path)).model
    assert back.blocks[2].conv1.in_channels == 32 - joint
    assert _n_params(back) < 0.5 * _n_params(model)
    x = torch.randn(16, 1, 28, 28)
    with torch.no_grad():
        assert (back(x) - model(x)).abs().max().item() <= LOGIT_ATOL


def test_dense_refuses_other_vision_and_encoder_models(tmp_path):
    from pqorder.models.zoo import RECIPES

    vit = RECIPES["fmnist-vit"].build()
    vit.arch = "fmnist-vit"
    with pytest.raises(ConfigError, match=r"built-in ResNet CNNs .* only, not of fmnist-vit"):
        export_model(LoadedModel("v", vit, None, kind="vision"), "dense", tmp_path / "v")
    with pytest.raises(ConfigError, match="causal language models only, not a vision model"):
        export_model(load_model("digits-cnn"), "gguf", tmp_path / "v.gguf")
    assert list(tmp_path.iterdir()) == []
