"""Parameter sharing (Basis Sharing): the whitened shared basis, the factored model as units of
the composition state (pruned and quantized after sharing, restored, saved and loaded), the
refusals, and `pqorder study share`, on SmolLM2's first two blocks (one group of two)."""

from __future__ import annotations

import pytest
import torch

from pqorder import api
from pqorder.analysis.share import ShareStudy, check_share_study
from pqorder.artifacts import save_compressed
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.engine import apply_step, check_pipeline
from pqorder.errors import ConfigError, FormatError, OrderError
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.export import export_model
from pqorder.factors import FactoredLinear
from pqorder.methods.share import refit_coefficients, share_rank, shared_basis, whitened_error
from pqorder.models.adapter import compressible_units, get_weight, run_model
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_step
from pqorder.snapshot import restore_snapshot, take_snapshot
from pqorder.store import RunStore
from pqorder.study import Study
from tests.test_stages import excerpt  # noqa: F401  (fixture)

SMALL = CalibrationSpec("austen:pride", n_samples=4, seqlen=64, seed=0)
PARTS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
PARTS += ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


@pytest.fixture(scope="module")
def calibration(_tiny_session):
    return sample_calibration(SMALL, _tiny_session[0].tokenizer)


@pytest.fixture(scope="module")
def shared(_tiny_session, calibration):
    """The tiny model after share:ratio=0.2 with refit (snapshot) and its step record."""
    lm, dense = _tiny_session
    restore_snapshot(lm, dense)
    step = parse_step("share:ratio=0.2,group=2,refit=true")
    record = apply_step(lm, step, calibration, progress=False)
    snap = take_snapshot(lm)
    restore_snapshot(lm, dense)
    return snap, record


def _logits(lm, tokens):
    with torch.no_grad():
        return run_model(lm.model, tokens).logits


def test_whitened_basis_error_falls_with_rank_and_beats_plain_svd(tiny):
    layers = tiny.model.model.layers
    ws = [get_weight(b.self_attn.q_proj) for b in layers]
    torch.manual_seed(0)
    x = torch.randn(2048, 576) * torch.linspace(0.1, 3.0, 576)  # anisotropic inputs
    h = x.t() @ x / 2048
    errors = []
    for rank in (32, 128, 320, 576):
        basis, coefs = shared_basis(ws, h, rank, damp=1e-6)
        assert basis.shape == (rank, 576) and [c.shape for c in coefs] == [(576, rank)] * 2
        errors.append(sum(whitened_error(w, c @ basis, h) for w, c in zip(ws, coefs, strict=True)))
    assert errors[0] > errors[1] > errors[2] > errors[3] and errors[3] < 1e-3
    # at one rank, the whitened basis beats the plain SVD of the stack in the whitened norm
    u, s, vh = torch.linalg.svd(torch.cat(ws), full_matrices=False)
    plain = (u[:, :128] * s[:128]) @ vh[:128]
    plain_error = sum(whitened_error(w, p, h) for w, p in zip(ws, plain.split(576), strict=True))
    assert errors[1] < plain_error
    # refitting one layer's coefficients on its own Gram cannot be worse than the shared fit
    basis, coefs = shared_basis(ws, h + 2 * torch.eye(576), 128)
    refit = refit_coefficients(ws[0], basis, h, damp=1e-9)
    assert whitened_error(ws[0], refit @ basis, h) <= whitened_error(ws[0], coefs[0] @ basis, h)


def test_share_factors_units_close_to_dense_at_the_ratio(tiny, shared, calibration):
    snap, record = shared
    reference = _logits(tiny, calibration[:2])
    restore_snapshot(tiny, snap)
    blocks = tiny.model.model.layers
    # the q/k/v and gate/up bases are one module for both blocks, o/down have their own
    for part in PARTS:
        a, b = blocks[0].get_submodule(part), blocks[1].get_submodule(part)
        assert isinstance(a, FactoredLinear) and isinstance(b, FactoredLinear)
        assert (a.basis is b.basis) == (part not in ("self_attn.o_proj", "mlp.down_proj"))
    units = compressible_units(tiny.model)
    assert len(units) == 5 + 2 * 2 + 2 * 7  # shared bases once, per-layer bases, coefficients
    assert record.units == len(units) and record.sparsity == 0 and record.bits is None
    assert 0 < record.details["whitened_error"] < 0.2
    # parameters: the dense projections against every factor counted once
    dense = 2 * sum(576 * w for w in (576, 192, 192, 576, 1536, 1536, 1536))
    after = sum(m.weight.numel() for m in units.values())
    assert record.details["params_before"] == dense and record.details["params_after"] == after
    assert 0.2 <= 1 - after / dense < 0.21
    assert record.details["ranks"]["self_attn.q_proj"] == [share_rank(0.2, 576, 576, 2)] == [307]
    assert record.details["ranks"]["mlp.down_proj"] == [share_rank(0.2, 576, 1536, 1)] == [335]
    out = _logits(tiny, calibration[:2])
    rel = ((out - reference).norm() / reference.norm()).item()
    assert rel < 0.1  # 20% of the projections' parameters gone: logits within 10%


def test_pruning_and_quantization_after_share_work_on_the_factors(tiny, shared, calibration):
    snap, _record = shared
    restore_snapshot(tiny, snap)
    apply_step(tiny, parse_step("sparsegpt:ratio=0.3"), calibration, progress=False)
    apply_step(tiny, parse_step("rtn:bits=4,group=64"))
    units = compressible_units(tiny.model)
    for name, module in units.items():
        w, c = get_weight(module), tiny.state.get(name)
        assert c.mask is not None and c.grid is not None and c.grid.bits == 4, name
        assert int((~c.mask).sum()) == int(0.3 * w.numel()), name  # the factor's own 30%
        assert (w[~c.mask] == 0).all() and c.grid.contains(w), name
    shared_basis_unit = tiny.model.model.layers[1].self_attn.q_proj.basis
    assert (shared_basis_unit.weight[~tiny.state.get(f"{_q(0)}.basis").mask] == 0).all()


def _q(i: int) -> str:
    return f"model.layers.{i}.self_attn.q_proj"


def test_dense_restores_and_factored_model_saves_and_loads(tiny, dense_tiny, shared, tmp_path):
    snap, _record = shared
    tokens = torch.arange(40).view(2, 20) + 100
    dense_logits = _logits(tiny, tokens)
    restore_snapshot(tiny, snap)
    apply_step(tiny, parse_step("magnitude:ratio=0.2"))
    factored = _logits(tiny, tokens)
    save_compressed(tiny, tmp_path / "out", {}, overwrite=False)
    loaded = load_model(str(tmp_path / "out"))
    assert loaded.state.model.factoring == tiny.state.model.factoring
    assert torch.equal(_logits(loaded, tokens), factored)
    assert loaded.model.model.layers[1].self_attn.q_proj.basis is (
        loaded.model.model.layers[0].self_attn.q_proj.basis
    )
    assert loaded.state.get(f"{_q(0)}.coef").mask is not None
    with pytest.raises(ConfigError, match=r"compressed-tensors .*shared basis factors"):
        export_model(tiny, "compressed-tensors", tmp_path / "ct")
    assert not (tmp_path / "ct").exists()
    restore_snapshot(tiny, dense_tiny)  # back to plain Linear units
    assert torch.equal(_logits(tiny, tokens), dense_logits)
    assert len(compressible_units(tiny.model)) == 14


@pytest.mark.parametrize(
    ("steps", "error", "pattern"),
    [
        (
            "share:group=3",
            ConfigError,
            "group=3 needs at least 3 blocks to share a basis; the model has 2",
        ),
        ("share:ratio=0.9999", ConfigError, "leaves rank 0 for self_attn.q_proj"),
        ("share:ratio=1.0", ConfigError, "ratio: must lie in \\(0, 1\\)"),
        ("share:group=0", ConfigError, "group must be at least 1"),
        ("share > share", OrderError, "share cannot follow share"),
        ("share > rotate", OrderError, "rotate cannot follow share"),
        ("share > sleb:blocks=1,keep_first=0", OrderError, "sleb cannot follow share"),
        ("share > structured", OrderError, "structured cannot follow share"),
    ],
)
def test_bad_share_input_is_one_line_before_work(tiny, steps, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        check_pipeline(tiny, tuple(parse_step(s.strip()) for s in steps.split(">")))
    assert "\n" not in str(info.value)
    assert tiny.state.model.factoring is None


def test_share_study_stores_both_orders_and_reports(tiny, excerpt, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="not an unstructured pruner"):
        check_share_study("structured", [0.2], [0.3], "share")
    study = Study(
        tiny,
        PerplexityProtocol(f"file:{excerpt}", seqlen=64, max_tokens=128, batch_size=2),
        SMALL,
        RunStore(tmp_path / "runs.sqlite"),
        None,
        name="t",
        progress=False,
    )
    result = api.share_study(study, "magnitude", [0.2], [0.3], "share:group=2")
    assert study.spend.applied_steps == 4  # each order extends its first step alone
    study.reset()
    (pair,) = result.pairs
    values = (pair.share_alone, pair.prune_alone, pair.share_first, pair.prune_first)
    assert all(v is not None for v in values) and pair.share_first != pair.prune_first
    assert result.advantage(pair) == pytest.approx(pair.prune_first - pair.share_first)
    assert result.gap(pair) == pytest.approx(pair.prune_alone - pair.share_alone)
    runs = {r.pipeline: r for r in study.store.query(study="t")}
    assert len(runs) == 5  # dense, each alone, both orders
    both = [r for r in runs.values() if len(r.steps) == 2]
    assert {tuple(s["family"] for s in r.steps) for r in both} == {
        ("share", "prune"),
        ("prune", "share"),
    }
    (stored,) = [a for a in study.store.analyses("t") if a["kind"] == "share"]
    assert ShareStudy.from_dict(stored["payload"]) == result
    with pytest.raises(FormatError, match="format 99"):
        ShareStudy.from_dict({**stored["payload"], "format": 99})
    api.report(study, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Parameter sharing and pruning" in md and "stronger later won in" in md
    assert (tmp_path / "report" / "share.png").stat().st_size > 0


def test_study_share_cli_refuses_bad_ratios_before_loading():
    from typer.testing import CliRunner

    from pqorder.cli import app

    args = ["study", "share", "-m", "/nonexistent/model", "--shares", "0.1,1.5"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0  # refused before the (missing) model is looked up
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == "ratios must lie in (0, 1), got 1.5"
