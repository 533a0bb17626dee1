"""The console script end to end: real runs, saved artifacts, one-line errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pqorder.models.adapter import compressible_units, get_weight
from pqorder.models.loading import load_model

PQ = [sys.executable, "-m", "pqorder"]


def run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1"}  # tests never download
    return subprocess.run([*PQ, *args], capture_output=True, text=True, env=env, timeout=600)


def test_compress_saves_a_loadable_model_with_its_constraints(tmp_path):
    out = tmp_path / "m"
    res = run(
        "compress",
        "-p",
        "magnitude:ratio=0.2 > rtn:bits=4,group=128",
        "-o",
        str(out),
        "--max-tokens",
        "1024",
    )
    assert res.returncode == 0, res.stderr
    assert "perplexity" in res.stdout
    record = json.loads((out / "pqorder.json").read_text())
    assert record["pipeline"] == "magnitude:ratio=0.2 > rtn:bits=4,group=128,sym=false"
    assert [s["family"] for s in record["steps"]] == ["prune", "quantize"]
    assert record["perplexity"]["protocol"]["max_tokens"] == 1024
    lm = load_model(str(out))
    for name, module in compressible_units(lm.model).items():
        w = get_weight(module)
        c = lm.state.get(name)
        assert int((~c.mask).sum()) == int(0.2 * w.numel())
        assert (w[~c.mask] == 0).all() and c.grid.contains(w)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_eval_json_reports_protocol():
    res = run("eval", "--max-tokens", "1024", "--json")
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["windows"] == 2 and doc["protocol"]["dataset"] == "austen:emma"
    assert 20 < doc["perplexity"] < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compress", "-p", "rtn:bits=12", "-o", "{tmp}/x"], "unsupported bit-width 12"),
        (["compress", "-p", "prune:ratio=0.2", "-o", "{tmp}/x"], "unknown method 'prune'"),
        (["compress", "-p", "magnitude:nm=2:5", "-o", "{tmp}/x"], "does not divide"),
        (["eval", "-m", "no-such-org/no-such-model"], "smollm2-135m"),
        (["eval", "--data", "austen:ulysses"], "unknown Austen novel"),
        (["grid", "--prune", "rtn:bits=4"], "not prune"),
        (
            [
                "recommend",
                "--methods",
                "rtn:bits=4",
                "--methods",
                "wanda:ratio=0.2",
                "--ratio",
                "x",
            ],
            "--ratio must be",
        ),
        (["interference", "--pair", "magnitude:ratio=0.2"], "--pair takes"),
        (["search", "--methods", "rtn:bits=4", "--methods", "wanda:ratio=2"], "[0, 1)"),
        (["demo", "--vision", "smollm2-135m", "-o", "{tmp}/x"], "--vision takes a vision model"),
        (["demo", "--vision", "resnet18", "-o", "{tmp}/x"], "no offline evaluation set"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, inline, args, message):
    res = inline(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0], res.stderr
    assert not (tmp_path / "x").exists()


def test_existing_output_is_refused(tmp_path, inline):
    (tmp_path / "x").mkdir()
    res = inline("compress", "-p", "rtn:bits=8", "-o", str(tmp_path / "x"))
    assert res.returncode == 2 and "--overwrite" in res.stderr


def test_methods_lists_every_method(inline):
    res = inline("methods")
    assert res.returncode == 0
    for name in ("magnitude", "rtn"):
        assert name in res.stdout


def test_saved_state_matches_in_memory(smol, tmp_path):
    from pqorder.artifacts import save_compressed
    from pqorder.pipeline import parse_pipeline, run_pipeline

    run_pipeline(smol, parse_pipeline("rtn:bits=3,sym=true > magnitude:nm=2:4"), False)
    save_compressed(smol, tmp_path / "m", {"pipeline": "x"}, overwrite=False)
    back = load_model(str(tmp_path / "m"))
    for name, c in smol.state.units.items():
        b = back.state.get(name)
        assert torch.equal(c.mask, b.mask) and torch.equal(c.grid.scale, b.grid.scale)
    assert Path(tmp_path / "m" / "pqorder.json").exists()


def test_order_commands_end_to_end(tiny_dir, tmp_path, inline):
    common = [
        "-m",
        str(tiny_dir),
        "--seqlen",
        "256",
        "--max-tokens",
        "512",
        "--calib-samples",
        "4",
        "--calib-seqlen",
        "64",
        "--store",
        str(tmp_path / "s.sqlite"),
        "--study",
        "cli",
    ]
    methods = ["--methods", "magnitude:ratio=0.3", "--methods", "rtn:bits=4,group=128"]
    res = inline("recommend", *methods, *common, "--bits", "3,4,8")
    assert res.returncode == 0, res.stderr
    assert "recommended order" in res.stdout and "confidence" in res.stdout
    res = inline("search", *methods, *common)
    assert res.returncode == 0, res.stderr
    assert "steps applied" in res.stdout and "PIH recommendation was best" in res.stdout
    res = inline("interference", "--pair", "magnitude:ratio=0.3 | rtn:bits=4,group=128", *common)
    assert res.returncode == 0, res.stderr
    assert "interference" in res.stdout
    res = inline(
        "runs",
        "--study",
        "cli",
        "--store",
        str(tmp_path / "s.sqlite"),
        "--export",
        str(tmp_path / "runs.csv"),
    )
    assert res.returncode == 0 and (tmp_path / "runs.csv").exists()
    res = inline(
        "report",
        "--study",
        "cli",
        "--store",
        str(tmp_path / "s.sqlite"),
        "-o",
        str(tmp_path / "rep"),
    )
    assert res.returncode == 0, res.stderr
    assert "Order search" in (tmp_path / "rep" / "report.md").read_text()
    bad = inline("recommend", "--methods", "rtn:bits=4", *common)
    assert bad.returncode == 2 and "at least two" in bad.stderr
    bad = inline("sweep", "--bits", "3,x", *common)
    assert bad.returncode == 2 and "comma-separated" in bad.stderr
