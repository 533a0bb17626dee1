"""Multi-stage pruning: cumulative ratios counted zero by zero, earlier zeros and grids kept
(tiny random LLaMA), the refusal of a stage that would add nothing, and `pqorder study
stages` (table, plot, stored runs, report) on SmolLM2's first two blocks, tiny budget."""

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pqorder import api
from pqorder.analysis.stages import StagesStudy
from pqorder.cli import app
from pqorder.data.calibration import CalibrationSpec
from pqorder.data.sources import load_text
from pqorder.engine import apply_step, check_pipeline
from pqorder.errors import ConfigError, FormatError, OrderError
from pqorder.eval.perplexity import PerplexityProtocol
from pqorder.models.adapter import compressible_units, get_weight, unit_shape
from pqorder.pipeline import parse_pipeline, parse_step, run_pipeline
from pqorder.prefix_cache import PrefixCache
from pqorder.state import UnitConstraint
from pqorder.store import RunStore
from pqorder.study import Study
from tests.test_architectures import _tokens, tiny_family
from tests.test_obs import _layer

CALIBRATION = CalibrationSpec("austen:pride", n_samples=8, seqlen=128, seed=0)


@pytest.fixture(scope="module")
def excerpt(tmp_path_factory) -> Path:
    """The opening of Emma as a small text file: a protocol on it reads and tokenizes a few
    pages per evaluation instead of the whole novel (the studies evaluate many runs)."""
    path = tmp_path_factory.mktemp("text") / "emma.txt"
    path.write_text(load_text("austen:emma").text[:20_000])
    return path


def _pruned_per_unit(units, ratio, per_row):
    """What the declared semantics prunes: ⌊ratio·n⌋ per layer, or ⌊ratio·in⌋ per row."""
    out = {}
    for name, module in units.items():
        rows, cols = unit_shape(module)
        out[name] = rows * int(ratio * cols) if per_row else int(ratio * rows * cols)
    return out


@pytest.mark.parametrize("pruner", ["sparsegpt", "wanda", "magnitude"])
def test_stages_reach_their_cumulative_sparsity_and_keep_zeros_and_grid(pruner):
    """``P:ratio=0.2 > gptq > P:ratio=0.4`` on a tiny random LLaMA (2 blocks, hidden 64)."""
    lm, tokens = tiny_family("llama"), _tokens(8, 0)
    units = compressible_units(lm.model)
    per_row = pruner == "wanda"
    texts = (f"{pruner}:ratio=0.2", "gptq:bits=4,group=32", f"{pruner}:ratio=0.4")
    records, masks = [], []
    for text in texts:
        records.append(apply_step(lm, parse_step(text), tokens, progress=False))
        masks.append({n: lm.state.get(n).mask.clone() for n in units})
    for record, ratio, mask in zip(records, (0.2, 0.2, 0.4), masks, strict=True):
        pruned = {n: int((~m).sum()) for n, m in mask.items()}
        assert pruned == _pruned_per_unit(units, ratio, per_row)  # counted zero by zero
        assert record.sparsity == sum(pruned.values()) / sum(m.numel() for m in mask.values())
    assert records[2].sparsity == pytest.approx(0.4, abs=0.01)  # the model's total after it
    if per_row:
        for name, m in masks[2].items():
            assert ((~m).sum(dim=1) == int(0.4 * m.shape[1])).all(), name
    for name, module in units.items():
        w = get_weight(module)
        assert torch.equal(masks[1][name], masks[0][name])  # the quantizer kept the mask
        assert not (masks[2][name] & ~masks[0][name]).any()  # every earlier zero stays pruned
        assert (w[~masks[2][name]] == 0).all()
        assert lm.state.get(name).grid.contains(w)  # the last stage stayed on the grid


def test_sparsegpt_stage_lands_on_its_ratio_whatever_the_earlier_mask():
    """Earlier zeros all in the last columns (30% of the layer): the new zeros go where weights
    are still alive, so the layer ends at exactly ⌊0.4·n⌋ (not 50%, as a per-block quota
    blind to the earlier mask would give)."""
    w, _x, stats = _layer(64, 256)
    earlier = torch.ones_like(w, dtype=torch.bool)
    earlier[:, -77:] = False
    before = UnitConstraint(mask=earlier)
    s, after = parse_step("sparsegpt:ratio=0.4").compress_unit(before.project(w), before, stats)
    assert int((~after.mask).sum()) == int(0.4 * w.numel())
    assert not (after.mask & ~earlier).any() and (s[~after.mask] == 0).all()


@pytest.mark.parametrize(
    "text, top",
    [
        ("sparsegpt:ratio=0.4 > gptq:bits=4 > sparsegpt:ratio=0.2", "sparsegpt:ratio=0.4"),
        ("wanda:ratio=0.3 > rtn:bits=4 > wanda:ratio=0.1", "wanda:ratio=0.3"),
        ("magnitude:ratio=0.5 > sparsegpt:ratio=0.3", "magnitude:ratio=0.5"),
        ("magnitude:nm=2:4 > wanda:ratio=0.3", "magnitude:nm=2:4"),
    ],
)
def test_stage_below_the_sparsity_reached_is_refused_before_work(tiny, text, top):
    with pytest.raises(OrderError) as err:
        run_pipeline(tiny, parse_pipeline(text), progress=False)
    message = str(err.value)
    assert "\n" not in message and "would add nothing" in message and top in message
    assert not tiny.state.units  # refused before any step ran


@pytest.mark.parametrize(
    "text",
    [
        "sparsegpt:ratio=0.3 > rtn:bits=4 > sparsegpt:ratio=0.3",  # equal: allowed, adds nothing
        "magnitude:ratio=0.3 > wanda:ratio=0.2",  # rows magnitude left below 20% gain zeros
        "magnitude:ratio=0.6 > magnitude:nm=2:4",  # N:M is a pattern, not a smaller ratio
        "magnitude:ratio=0.5 > rotate:force=true > magnitude:ratio=0.2",  # rotation drops masks
    ],
)
def test_stage_orders_that_are_accepted(tiny, text):
    check_pipeline(tiny, parse_pipeline(text).steps)


def test_stages_study_runs_every_split_stores_and_reports(tiny, excerpt, tmp_path):
    study = Study(
        tiny,
        PerplexityProtocol(f"file:{excerpt}", seqlen=128, max_tokens=256, batch_size=2),
        CALIBRATION,
        RunStore(tmp_path / "runs.sqlite"),
        PrefixCache(tmp_path / "prefixes"),
        name="t",
    )
    result = api.stages_study(study, ["magnitude"], 0.4, (0.1, 0.3), "rtn:bits=4,group=128")
    study.reset()
    assert [p.split for p in result.points] == ["40/0", "30/10", "10/30", "0/40"]
    units = compressible_units(tiny.model)
    size = sum(m.weight.numel() for m in units.values())
    s1, s3, s4 = (
        round(sum(_pruned_per_unit(units, r, False).values()) / size, 6) for r in (0.1, 0.3, 0.4)
    )
    # the model's sparsity after each step (6 decimals), as the engine counted it
    assert [p.sparsity for p in result.points] == [[s4, s4], [s3, s3, s4], [s1, s1, s4], [0, s4]]
    assert all(p.value is not None for p in result.points)
    # each prefix applied once: 2 + 3 + 3 steps, the middle step once for itself and for 0/40
    assert study.spend.applied_steps == 2 + 3 + 3 + 1 + 1 and study.spend.cache_hits == 1
    runs = study.store.query(study="t")
    assert len(runs) == 2 + len(result.points)  # dense, middle alone, every split
    assert [r.value for r in runs if r.pipeline == "dense"] == [result.dense]
    mirrors = [(f.split, b.split) for f, b in result.mirrors()]
    assert mirrors == [("40/0", "0/40"), ("30/10", "10/30")] and len(result.held()) == 2
    a = result.points[0].value - result.points[3].value  # −ppl(0/40) − (−ppl(40/0))
    assert result.mirror_table().rows[0][5] == pytest.approx(a)
    (stored,) = [a for a in study.store.analyses("t") if a["kind"] == "stages"]
    assert StagesStudy.from_dict(stored["payload"]) == result
    with pytest.raises(FormatError, match="format 99"):
        StagesStudy.from_dict({**stored["payload"], "format": 99})
    api.report(study, tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "Multi-stage pruning" in md and "30/10" in md and "mirrored pairs" in md
    assert (tmp_path / "report" / "stages.png").stat().st_size > 0


def test_study_stages_cli_prints_plots_and_stores(tiny_dir, excerpt, tmp_path):
    store, plot = tmp_path / "runs.sqlite", tmp_path / "stages.png"
    common = ["-m", str(tiny_dir), "--data", f"file:{excerpt}", "--seqlen", "128"]
    common += ["--max-tokens", "256"]
    common += ["--calib-samples", "4", "--calib-seqlen", "64", "--no-cache"]
    common += ["--store", str(store), "--study", "cli", "--plot", str(plot)]
    args = ["study", "stages", "--prune", "wanda", "--first", "0.2", "--middle", "rtn:bits=4"]
    result = CliRunner().invoke(app, [*args, *common])
    assert result.exit_code == 0, result.output
    assert "20/20" in result.output and "stronger stage later won in" in result.output
    assert plot.stat().st_size > 0
    pipelines = [r.pipeline for r in RunStore(store).query(study="cli")]
    assert len(pipelines) == 5 and pipelines[-1].startswith("rtn")  # all after: the last run
    bad = CliRunner().invoke(app, ["study", "stages", "--first", "0.5", *common])
    assert isinstance(bad.exception, ConfigError) and "strictly between 0" in str(bad.exception)
