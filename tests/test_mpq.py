"""Mixed precision as an order problem: the allocation, the grids and zeros it keeps, the
orders (real with GPTQ, identical with RTN), bad input, export, and the study end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pqorder import api
from pqorder.analysis.mpq import MPQStudy
from pqorder.cli import app
from pqorder.data.calibration import CalibrationSpec, sample_calibration
from pqorder.data.sources import load_text
from pqorder.engine import apply_step
from pqorder.errors import ConfigError, FormatError
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.export import export_model
from pqorder.methods.mpq import allocate, average_bits
from pqorder.models.adapter import compressible_units, get_weight
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_step
from pqorder.snapshot import restore_snapshot, take_snapshot
from pqorder.state import CompressionState
from pqorder.store import RunStore
from pqorder.study import Study

CALIBRATION = CalibrationSpec("austen:pride", n_samples=4, seqlen=64, seed=0)


@pytest.fixture(scope="module")
def calibration(_tiny_session):
    return sample_calibration(CALIBRATION, _tiny_session[0].tokenizer)


def _sizes(lm) -> dict[str, int]:
    return {n: get_weight(m).numel() for n, m in compressible_units(lm.model).items()}


def test_allocation_meets_the_average_and_gives_sensitive_units_more_bits():
    widths = (2, 3, 4, 8)
    # error c_u · 4^-b: unit k is k times as sensitive as unit 1 at every width
    sizes = {f"u{k:02d}": 1000 for k in range(1, 21)}
    errors = {u: {b: (k + 1) * 4.0**-b for b in widths} for k, u in enumerate(sorted(sizes))}
    for avg in (2.0, 2.5, 3.0, 4.0, 5.3, 8.0):
        bits = allocate(sizes, errors, widths, avg)
        assert average_bits(bits, sizes) <= avg
        # nothing is left that would still fit: the average is met or just below
        used = sum(b * sizes[u] for u, b in bits.items())
        for u, b in bits.items():
            up = [w for w in widths if w > b]
            assert not up or used + sizes[u] * (up[0] - b) > avg * sum(sizes.values())
        ranked = [bits[u] for u in sorted(sizes)]
        assert ranked == sorted(ranked), avg  # more sensitive, never fewer bits
        # exactly the average whenever a unit's upgrade fits the rest (4 → 8 costs 4 bits)
        assert average_bits(bits, sizes) == (5.2 if avg == 5.3 else avg)
    # unequal sizes: the budget counts weights, not units
    sizes = {"big": 3000, "small": 1000}
    flat = {u: {2: 1.0, 4: 0.5} for u in sizes}
    bits = allocate(sizes, flat, (2, 4), 2.5)
    assert bits == {"big": 2, "small": 4} and average_bits(bits, sizes) == 2.5


def test_rtn_allocation_beats_uniform_bits_keeps_zeros_and_grids(tiny, calibration):
    lm = tiny
    apply_step(lm, parse_step("magnitude:ratio=0.3"), progress=False)
    masks = {n: lm.state.get(n).mask.clone() for n in compressible_units(lm.model)}
    pruned = take_snapshot(lm)
    record = apply_step(
        lm, parse_step("mpq:set=2/3/4/8,avg=3,quant=rtn,group=64,errors=true"), calibration,
        progress=False,
    )  # fmt: skip
    details = record.details
    allocation, sizes = details["allocation"], _sizes(lm)
    assert details["average_bits"] == average_bits(allocation, sizes) <= 3.0
    assert len(set(allocation.values())) > 1 and record.bits == min(allocation.values())
    for name, module in compressible_units(lm.model).items():
        w, c = get_weight(module), lm.state.get(name)
        assert torch.equal(c.mask, masks[name]) and (w[~c.mask] == 0).all(), name
        assert c.grid.bits == allocation[name] and c.grid.group_size == 64, name
        assert c.grid.contains(w), name
        groups = w[:, : w.shape[1] // 64 * 64].reshape(-1, 64)
        assert max(int(torch.unique(g).numel()) for g in groups[::97]) <= 2**c.grid.bits
    # the walk of each bit group in order, high bits first, and the score's measured cost
    assert [p["bits"] for p in details["passes"]] == [
        [b] for b in sorted(set(allocation.values()), reverse=True)
    ]
    assert details["score_seconds"] > 0 and not details["score_reused"]
    mixed = sum(details["unit_error"].values())
    restore_snapshot(lm, pruned)
    uniform = apply_step(
        lm, parse_step("mpq:set=3/4,avg=3,quant=rtn,group=64,errors=true"), calibration,
        progress=False,
    ).details  # fmt: skip
    assert set(uniform["allocation"].values()) == {3}
    # the data-driven allocation has less Hessian-weighted error at the same average
    assert mixed < 0.9 * sum(uniform["unit_error"].values())


def test_progressive_and_regressive_differ_with_gptq_not_with_rtn():
    """On the digits CNN (5 units): GPTQ re-calibrates each bit group on the model as the
    earlier groups left it, so the order changes weights; RTN ignores it."""
    lm = load_model("digits-cnn")
    images = sample_calibration(CalibrationSpec("digits:train", 32, 2, 0), None)
    dense = take_snapshot(lm)
    weights, records = {}, {}
    for quant in ("gptq", "rtn"):
        for order in ("progressive", "regressive"):
            restore_snapshot(lm, dense)
            text = f"mpq:set=2/4/8,avg=3.5,quant={quant},order={order},errors=true"
            records[quant, order] = apply_step(lm, parse_step(text), images, progress=False)
            weights[quant, order] = {
                n: get_weight(m) for n, m in compressible_units(lm.model).items()
            }
    prog, regr = records["gptq", "progressive"].details, records["gptq", "regressive"].details
    assert prog["allocation"] == regr["allocation"]  # no order-dependent unit
    assert len({b for p in prog["passes"] for b in p["bits"]}) > 1
    assert prog["score_reused"] is False and regr["score_reused"] is True  # one scoring walk
    first = prog["passes"][0]["bits"][0]  # the highest width: quantized first by progressive
    changed = [
        n for n in prog["allocation"]
        if not torch.equal(weights["gptq", "progressive"][n], weights["gptq", "regressive"][n])
    ]  # fmt: skip
    assert any(prog["allocation"][n] != first for n in changed)  # later groups see the errors
    assert prog["unit_error"] != regr["unit_error"]
    for n, w in weights["rtn", "progressive"].items():
        assert torch.equal(w, weights["rtn", "regressive"][n]), n
    assert records["rtn", "progressive"].details["unit_error"] == pytest.approx(
        records["rtn", "regressive"].details["unit_error"]
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mpq:set=2/3/4,avg=5", r"average 5 bits lies outside the set's range \[2, 4\]"),
        ("mpq:set=4/8,avg=3.5", r"outside the set's range \[4, 8\]"),
        ("mpq:set=4,avg=4", "a bit set needs at least two widths"),
        ("mpq:set=4/4,avg=4", "a bit set needs at least two widths"),
        ("mpq:set=2/4/16,avg=4", "gptq cannot quantize to 16 bits"),
        ("mpq:set=1/4,avg=3,quant=rtn", "rtn cannot quantize to 1 bits"),
        ("mpq:set=2/x,avg=2", "integers joined by '/'"),
        ("mpq:order=sideways", "order: Input should be 'progressive', 'regressive' or 'once'"),
    ],
)
def test_bad_input_is_one_line(text, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_step(text)
    assert "\n" not in str(caught.value)


def test_set_text_is_canonical_and_round_trips():
    step = parse_step("mpq:set=8/2/4,avg=4")
    assert step.config.set == "2/4/8" and parse_step(step.to_text()) == step
    assert parse_step(step.label()) == step


@pytest.mark.slow
def test_mixed_bits_export_and_state_round_trip(tiny, calibration, tmp_path):
    """4- and 8-bit units (symmetric) export as two compressed-tensors groups that transformers
    loads bit for bit; the saved state keeps each unit's width."""
    lm = tiny
    step = parse_step("mpq:set=4/8,avg=5,quant=rtn,group=64,sym=true")
    allocation = apply_step(lm, step, calibration, progress=False).details["allocation"]
    assert set(allocation.values()) == {4, 8}
    lm.state.save(tmp_path / "state.safetensors")
    loaded = CompressionState.load(tmp_path / "state.safetensors")
    assert {n: c.grid.bits for n, c in loaded.units.items()} == allocation
    out = export_model(lm, "compressed-tensors", tmp_path / "ct").path
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    schemes = {
        g["weights"]["num_bits"]: set(g["targets"]) for g in config["config_groups"].values()
    }
    assert schemes == {b: {n for n, v in allocation.items() if v == b} for b in (4, 8)}
    from transformers import AutoModelForCausalLM

    loaded = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = calibration[:1, :32]
    with torch.no_grad():  # the first forward decompresses the packed units
        got, expected = loaded(ids).logits, lm.model(ids).logits
    assert (got - expected).abs().max().item() <= 1e-4
    back = dict(loaded.named_modules())
    for name, unit in compressible_units(lm.model).items():
        assert torch.equal(back[name].weight.detach(), get_weight(unit)), name


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "emma.txt"
    path.write_text(load_text("austen:emma").text[:20_000])
    return path


def test_mpq_study_stores_reports_and_measures_no_interference_with_rtn(tiny, excerpt, tmp_path):
    study = Study(
        tiny,
        PerplexityProtocol(f"file:{excerpt}", seqlen=64, max_tokens=128, batch_size=2),
        CalibrationSpec("austen:pride", n_samples=2, seqlen=32, seed=0),
        RunStore(tmp_path / "runs.sqlite"),
        None,
        name="t",
    )
    step = "mpq:set=2/3/4/8,quant=rtn,group=64"
    result = api.mpq_study(study, step, (4, 3))
    study.reset()
    assert result.budgets == [3.0, 4.0] and len(result.runs) == 10
    assert [r.run for r in result.runs[:5]] == ["progressive", "regressive", "once", "high", "low"]
    for b in result.budgets:
        runs = {r.run: r for r in result.runs if r.budget == b}
        assert all(r.value is not None and r.bits <= b for r in runs.values())
        # RTN: the order changes nothing; each half alone quantizes its own units only
        assert result.advantage(b) == 0 and result.pih_held(b) is None
        assert runs["progressive"].value == runs["regressive"].value == runs["once"].value
        halves = {w: runs["high"].widths.get(w, 0) + runs["low"].widths.get(w, 0) for w in
                  runs["once"].widths}  # fmt: skip
        assert halves == runs["once"].widths
        assert all(int(w) >= b for w in runs["high"].widths)
        assert all(int(w) < b for w in runs["low"].widths)
        gap = -runs["high"].value - (-runs["low"].value)
        assert result.gap(b) == pytest.approx(gap)
    assert [(i.units, i.moved, i.delta, i.changed) for i in result.interference] == [
        (14, 0, 0, 0),
        (14, 0, 0, 0),
    ]
    assert result.grows() is False and "progressive won at 0 of 2 budgets" in result.summary()
    runs = study.store.query(study="t")
    assert len(runs) == 11  # dense + 5 per budget
    reused = [r.steps[0]["details"]["score_reused"] for r in runs if r.steps]
    assert reused.count(False) == 1  # one scoring walk for the whole study
    (stored,) = [a for a in study.store.analyses("t") if a["kind"] == "mpq"]
    assert MPQStudy.from_dict(stored["payload"]) == result
    with pytest.raises(FormatError, match="format 99"):
        MPQStudy.from_dict({**stored["payload"], "format": 99})
    api.report(study, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Mixed precision as an order" in md and "order-dependent units" in md
    assert (tmp_path / "report" / "mpq.png").stat().st_size > 0


def test_study_mpq_cli_refuses_bad_budgets_before_loading(tmp_path):
    missing = tmp_path / "no-model"  # never loaded: the refusal comes first
    for budgets, message in (("3,9", "outside the set's range"), ("x", "comma-separated")):
        bad = CliRunner().invoke(app, ["study", "mpq", "-m", str(missing), "--budgets", budgets])
        assert isinstance(bad.exception, ConfigError) and message in str(bad.exception)
