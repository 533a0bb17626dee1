"""Vision models: Conv2d units through im2col, structured filter pruning, BatchNorm
re-estimation, top-1 on real images (scikit-learn digits, real Fashion-MNIST files), and the
order study with accuracy as the metric."""

import pytest
import torch
from torch import nn

from pqorder import api
from pqorder.core import LoadedModel
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.data.images import load_images
from pqorder.engine import apply_step
from pqorder.errors import AssetError, ConfigError
from pqorder.eval.accuracy import AccuracyProtocol
from pqorder.layerwise import calibrated_units
from pqorder.models.adapter import (
    compressible_units,
    get_weight,
    set_weight,
    skipped_units,
    unit_inputs,
)
from pqorder.models.loading import load_model
from pqorder.models.vision import ImageClassifier
from pqorder.pipeline import parse_pipeline, parse_step, run_pipeline
from pqorder.snapshot import restore_snapshot, take_snapshot
from pqorder.state import ActivationQuant
from pqorder.store import RunStore
from pqorder.study import Study
from pqorder.transforms import quantize_input

DIGITS = AccuracyProtocol("digits:test")
CALIB = CalibrationSpec("digits:train", 64, 512, 0)


@pytest.fixture(scope="session")
def _digits_session():
    lm = load_model("digits-cnn")  # trained once per cache (about 10 s), then loaded
    return lm, take_snapshot(lm)


@pytest.fixture
def digits(_digits_session) -> LoadedModel:
    lm, dense = _digits_session
    restore_snapshot(lm, dense)
    return lm


@pytest.fixture(scope="session")
def digit_images():
    return sample_calibration(CALIB, None)


def _tiny_conv_model() -> ImageClassifier:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU())
    head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    return ImageClassifier(nn.Identity(), nn.ModuleList([block]), head, (2, 5, 5))


def test_conv_hessian_matches_brute_force_patches():
    model = _tiny_conv_model()
    conv = model.blocks[0][0]
    x = torch.randn(3, 2, 5, 5)
    lm = LoadedModel("tiny", model, None, kind="vision")
    ((name, _m, stats),) = calibrated_units(lm.model, compressible_units(model), x, 2, False, False)
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    rows = [
        padded[b, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(-1)
        for b in range(3)
        for i in range(3)
        for j in range(3)
    ]
    xs = torch.stack(rows).double()  # (27 positions, 2·3·3)
    expected = 2 / len(rows) * xs.T @ xs
    assert name == "blocks.0.0" and stats.n_tokens == 27
    torch.testing.assert_close(stats.hessian.double(), expected, rtol=1e-5, atol=1e-6)
    # The (out, C·kh·kw) weight view multiplies those rows: the convolution itself.
    out = unit_inputs(conv, x) @ get_weight(conv).T + conv.bias
    torch.testing.assert_close(out, conv(x).permute(0, 2, 3, 1).reshape(-1, 3))


def test_set_weight_round_trips_the_conv_layout(digits):
    conv = compressible_units(digits.model)["blocks.1.conv1"]
    w = get_weight(conv)
    assert w.shape == (16, 8 * 9)
    set_weight(conv, w * 2)
    torch.testing.assert_close(conv.weight, (w * 2).view(16, 8, 3, 3))


def test_filter_pruning_removes_whole_filters_with_the_smallest_l1(digits):
    dense = {n: get_weight(m) for n, m in compressible_units(digits.model).items()}
    apply_step(digits, parse_step("rtn:bits=4"), progress=False)
    apply_step(digits, parse_step("filters:ratio=0.5"), progress=False)
    for name, module in compressible_units(digits.model).items():
        w, c = get_weight(module), digits.state.get(name)
        zero_rows = (w == 0).all(dim=1)
        assert int(zero_rows.sum()) == w.shape[0] // 2, name
        assert (c.mask.all(dim=1) | ~c.mask.any(dim=1)).all()  # rows are all kept or all pruned
        assert c.grid.contains(w)  # the earlier grid survives the structured pruning
        norms = dense[name].abs().sum(dim=1)
        assert norms[zero_rows].max() <= norms[~zero_rows].min() * 1.2  # L1 after quantization


def test_every_method_works_on_convolutions_and_accuracy_is_real(digits, digit_images):
    DIGITS.prepare(digits)
    dense = DIGITS.score(digits)
    assert dense > 0.9  # 500 real held-out digits
    snap = take_snapshot(digits)
    acc = {}
    for text in ["magnitude:ratio=0.5", "wanda:ratio=0.5", "sparsegpt:ratio=0.5", "gptq:bits=3"]:
        restore_snapshot(digits, snap)
        record = apply_step(digits, parse_step(text), digit_images, progress=False)
        assert record.units == 5
        acc[text] = DIGITS.score(digits)
    assert acc["sparsegpt:ratio=0.5"] >= acc["magnitude:ratio=0.5"]
    assert 0.1 < min(acc.values()) <= max(acc.values()) <= 1


def test_batchnorm_reestimation_helps_and_snapshots_restore_it(digits, digit_images):
    dense = DIGITS.score(digits)
    snap = take_snapshot(digits)
    apply_step(digits, parse_step("filters:ratio=0.3"), progress=False)
    plain = DIGITS.score(digits)
    restore_snapshot(digits, snap)
    bn = digits.model.blocks[0].bn1
    before = bn.running_var.clone()
    apply_step(digits, parse_step("filters:ratio=0.3,bn=true"), digit_images, progress=False)
    assert not torch.equal(bn.running_var, before)
    assert DIGITS.score(digits) > plain
    restore_snapshot(digits, snap)
    assert torch.equal(bn.running_var, before) and DIGITS.score(digits) == dense


def test_vision_study_sweep_and_report_use_accuracy(digits, tmp_path):
    study = Study(digits, DIGITS, CALIB, RunStore(tmp_path / "runs.sqlite"), name="v")
    dense = study.dense_run()
    assert dense.perplexity is None and dense.metric == dense.value > 0.9
    assert dense.metric_name == "top-1 accuracy"
    sweep = api.sweep(study, ["magnitude"], [0.3], "rtn", [3, 4], plot=tmp_path / "s.png")
    assert sweep.metric == "top-1 accuracy" and len(sweep.points) == 2
    for p in sweep.points:
        pq = study.evaluate((parse_step("magnitude:ratio=0.3"), parse_step(p.quant)))
        assert p.value_prune_then_quant == pq.metric
        assert p.advantage_q_first == pytest.approx(p.value_quant_then_prune - pq.metric)
    md = api.report(study, tmp_path / "report")
    text = md.read_text()
    assert "top-1 accuracy" in text and "perplexity" not in text
    with pytest.raises(ConfigError, match="logppl"):
        from pqorder.analysis.intensity import CurveOptions, reference_curve

        reference_curve(study, CurveOptions("rtn", (3, 4), space="logppl"))


def test_fashion_mnist_is_read_from_the_real_idx_files():
    test = load_images("fashion-mnist:test")
    assert test.images.shape == (10000, 1, 28, 28) and test.n_classes == 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10  # the official balanced split


def test_bad_input_is_refused_clearly(digits, tmp_path):
    with pytest.raises(ConfigError, match=r"do not fit this model, built for \(1, 8, 8\)"):
        AccuracyProtocol("fashion-mnist:test").prepare(digits)
    with pytest.raises(ConfigError, match="unknown image dataset"):
        AccuracyProtocol("cifar10").validate()
    empty = ImageClassifier(nn.Identity(), nn.ModuleList([nn.ReLU()]), nn.Flatten(), (1, 8, 8))
    with pytest.raises(ConfigError, match="no compressible layers"):
        compressible_units(empty)
    depthwise = ImageClassifier(
        nn.Identity(),
        nn.ModuleList([nn.Sequential(nn.Conv2d(4, 4, 3, groups=4), nn.Conv2d(4, 8, 1))]),
        nn.Flatten(),
        (4, 8, 8),
    )
    assert list(compressible_units(depthwise)) == ["blocks.0.1"]
    assert "depthwise" in skipped_units(depthwise)["blocks.0.0"]
    with pytest.raises(ConfigError, match="calibration images come from a training split"):
        from pqorder.eval.select import calibration_for

        calibration_for("digits", "digits:test", 8, 512, 0, "digits:test")


def test_missing_optional_vision_packages_say_so():
    import importlib.util

    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed here")
    with pytest.raises(AssetError, match="needs the `torchvision` package"):
        load_model("resnet18")


def test_compressed_vision_model_saves_and_reloads(digits, tmp_path):
    from pqorder.artifacts import save_compressed

    run_pipeline(digits, parse_pipeline("filters:ratio=0.25 > rtn:bits=4"), progress=False)
    acc = DIGITS.score(digits)
    save_compressed(digits, tmp_path / "out", {"pipeline": "x"}, overwrite=False)
    again = load_model(str(tmp_path / "out"))
    assert again.kind == "vision" and DIGITS.score(again) == acc
    name = "blocks.1.conv2"
    assert torch.equal(again.state.get(name).mask, digits.state.get(name).mask)


def test_activation_quantization_is_an_ordered_step(digits):
    conv = nn.Conv2d(8, 4, 3)
    x = torch.randn(2, 8, 5, 5)
    per_pixel = quantize_input(x, conv, ActivationQuant(3, 1.0, None, 1.0, "token", True))
    levels = per_pixel.movedim(1, -1).reshape(-1, 8)
    assert all(torch.unique(row).numel() <= 8 for row in levels)  # one grid per pixel
    assert torch.unique(per_pixel).numel() > 8
    whole = quantize_input(x, conv, ActivationQuant(3, 1.0, None, 1.0, "tensor", False))
    assert torch.unique(whole).numel() <= 8
    assert (whole - x).abs().max() < (x.max() - x.min()) / 7  # within one step of the grid
    dense = DIGITS.score(digits)
    snap = take_snapshot(digits)
    scores = {}
    for bits in (8, 2):
        restore_snapshot(digits, snap)
        run_pipeline(
            digits, parse_pipeline(f"actquant:bits={bits},per=tensor,sym=false"), None, False
        )
        scores[bits] = DIGITS.score(digits)
    assert abs(scores[8] - dense) < 0.02 and scores[2] < dense - 0.05
    restore_snapshot(digits, snap)
    assert DIGITS.score(digits) == dense  # the hooks are gone with the state
    with pytest.raises(ConfigError, match=r"; ImageClassifier is not a transformers"):
        run_pipeline(digits, parse_pipeline("actquant:kv_bits=4"), None, False)
    for bad, message in [
        ("actquant:bits=1", "unsupported activation bit-width 1"),
        ("actquant:per=channel", "'token' or 'tensor'"),
        ("actquant:clip=0", r"clip ratio must be in \(0, 1\]"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_pipeline(bad)


def test_cli_compresses_a_vision_model_and_refuses_a_mismatched_dataset(tmp_path, inline):
    import json

    out = tmp_path / "cnn"
    res = inline(
        "compress", "-m", "digits-cnn", "-p", "filters:ratio=0.25 > rtn:bits=4", "-o", str(out)
    )
    assert res.returncode == 0, res.stderr
    record = json.loads((out / "pqorder.json").read_text())
    assert record["top-1 accuracy"]["protocol"]["dataset"] == "digits:test"
    res = inline("eval", "-m", str(out), "--data", "fashion-mnist")
    assert res.returncode == 2 and "do not fit this model" in res.stderr
