"""The memory plan from a config alone, its refusals, and --device / --dtype resolution."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from typer.testing import CliRunner

from pqorder.cli import app
from pqorder.core import Need
from pqorder.errors import ConfigError
from pqorder.hardware import resolve_device, resolve_precision
from pqorder.models.adapter import decoder_blocks
from pqorder.pipeline import parse_pipeline
from pqorder.plan import GIB, RUNTIME_BYTES, LiveBytes, check_fits, config_dtype, plan_memory

LLAMA_7B = str(Path(__file__).parent / "data" / "llama-2-7b")
# LLaMA-2-7B: 32 blocks of 4·4096² attention + 3·4096·11008 MLP + 2·4096 norm weights,
# embeddings and head 32000·4096 each (untied), a final norm.
BLOCK_7B = 4 * 4096**2 + 3 * 4096 * 11008 + 2 * 4096
PARAMS_7B = 32 * BLOCK_7B + 2 * 32000 * 4096 + 4096


@pytest.fixture(scope="module")
def plan_7b():
    steps = parse_pipeline("sparsegpt:ratio=0.5").steps
    cuda = torch.device("cuda", 0)
    return plan_memory(LLAMA_7B, steps, cuda, torch.bfloat16, True, 128, 2048, 2048, 4)


def test_smollm2_plan_matches_the_loaded_model_exactly(smol):
    steps = parse_pipeline("rtn:bits=4,group=128").steps
    plan = plan_memory("smollm2-135m", steps, torch.device("cpu"), torch.float32, False, 16, 128)
    params = list(smol.model.parameters())
    assert plan.params == sum(p.numel() for p in params) == 134_515_008
    assert plan.weights == sum(p.numel() * p.element_size() for p in params)
    _, blocks = decoder_blocks(smol.model)
    block_bytes = max(sum(p.numel() * p.element_size() for p in b.parameters()) for b in blocks)
    assert plan.block == block_bytes
    saved = smol.model.state_dict().values()  # what a prefix-cache entry holds today
    assert plan.prefix_entry == sum(t.numel() * t.element_size() for t in saved)
    # RTN needs no statistics: the peak is the weights and one evaluation batch.
    assert plan.need == Need.NOTHING
    assert [label for label, _ in plan.device_parts] == ["weights", "evaluation"]
    # evaluation: (4, 512, 49152) float32 logits, their shifted (4, 511) copy and its
    # log-softmax at least
    assert plan.evaluation >= (4 * 512 + 2 * 4 * 511) * 49152 * 4


def test_7b_plan_numbers(plan_7b):
    assert plan_7b.params == PARAMS_7B == 6_738_415_616
    assert plan_7b.weights == 2 * PARAMS_7B  # bfloat16
    assert plan_7b.block == 2 * BLOCK_7B
    assert plan_7b.outside == 2 * (2 * 32000 * 4096 + 4096)
    hidden = 128 * 2048 * 4096 * 2  # block inputs for the calibration set, bf16
    assert 2 * hidden <= plan_7b.activations < 2 * hidden * 1.2  # + outputs, + masks/rotary
    # One Hessian per input group (q/k/v, o, gate/up: 4096; down: 11008), float64 + float32.
    assert plan_7b.statistics == 12 * (3 * 4096**2 + 11008**2)
    # The OBS solve of down_proj (4096 x 11008) dominates: 3 float32 W + 5 float64 + 1 float32 H.
    assert plan_7b.solver == 12 * 4096 * 11008 + 44 * 11008**2
    assert plan_7b.device_peak < 24 * GIB  # the README target: fits one 24 GB GPU
    assert plan_7b.host_peak == RUNTIME_BYTES + plan_7b.weights
    check_fits(plan_7b, device_free=24 * GIB, host_free=32 * GIB)


def test_refusal_names_the_numbers(plan_7b):
    steps = parse_pipeline("gptq:bits=4").steps
    cuda = torch.device("cuda", 0)
    whole = plan_memory(LLAMA_7B, steps, cuda, torch.bfloat16, False, 128, 2048, 2048, 4)
    assert whole.device_peak > plan_7b.device_peak + 11 * GIB  # every weight on the device
    with pytest.raises(
        ConfigError,
        match=r"^needs \d+\.\d GiB on cuda:0 \(weights 12\.6, .*"
        r"\), 16\.0 GiB free; use --offload$",
    ):
        check_fits(whole, device_free=16 * GIB, host_free=64 * GIB)
    with pytest.raises(
        ConfigError,
        match=r"GiB of host RAM \(runtime 0\.75, weights 12\.6\), "
        r"8\.0 GiB available",
    ):
        check_fits(plan_7b, device_free=24 * GIB, host_free=8 * GIB)


def test_cpu_refusal_counts_host_ram(smol):
    steps = parse_pipeline("wanda:ratio=0.5").steps
    plan = plan_memory("smollm2-135m", steps, torch.device("cpu"), torch.float32, False, 16, 128)
    assert plan.need == Need.STATISTICS
    with pytest.raises(
        ConfigError, match=r"on host RAM \(weights 0\.50, .*0\.20 GiB free; lower --calib-samples"
    ):
        check_fits(plan, device_free=GIB // 5)
    check_fits(plan, device_free=8 * GIB)


def test_studies_are_refused_before_loading_when_the_plan_does_not_fit(monkeypatch, tmp_path):
    """A study command checks the plan of the methods it will run, as compress does."""
    import pqorder.api
    import pqorder.plan

    monkeypatch.setattr(pqorder.plan, "device_available", lambda device: GIB // 5)
    monkeypatch.setattr(pqorder.api, "load_model", lambda *a: pytest.fail("model was loaded"))
    with pytest.raises(ConfigError, match=r"^needs \d+\.\d+ GiB on host RAM .*0\.20 GiB free"):
        pqorder.api.open_study(store=tmp_path / "runs.db", steps=["sparsegpt:ratio=0.5"])
    store = str(tmp_path / "runs.db")
    res = CliRunner().invoke(app, ["search", "--methods", "gptq:bits=4", "--store", store])
    assert isinstance(res.exception, ConfigError) and "0.20 GiB free" in str(res.exception)


def test_plan_command_prints_the_plan():
    res = CliRunner().invoke(
        app,
        [
            "plan",
            "-m",
            LLAMA_7B,
            "-p",
            "gptq:bits=4",
            "--device",
            "cuda:0",
            "--dtype",
            "bfloat16",
            "--offload",
            "--calib-seqlen",
            "2048",
            "--free",
            "24",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "6,738,415,616 parameters" in res.output
    assert "peak on cuda:0:" in res.output and "OBS solver" in res.output
    assert res.output.rstrip().endswith("fits")


def test_plan_command_exits_nonzero_when_it_does_not_fit():
    env = {**os.environ, "TQDM_DISABLE": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pqorder",
            "plan",
            "-m",
            LLAMA_7B,
            "-p",
            "rtn:bits=4",
            "--device",
            "cuda",
            "--no-offload",
            "--no-eval",
            "--free",
            "10",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 2
    assert "in float16" in res.stdout  # auto dtype: the checkpoint's own on a GPU
    assert res.stderr.strip().count("\n") == 0
    assert res.stderr.startswith("error: needs ") and "10.0 GiB free; use --offload" in res.stderr


def test_auto_and_explicit_dtypes():
    assert config_dtype(LLAMA_7B) == torch.float16
    cpu = torch.device("cpu")
    assert resolve_precision("cpu", "auto", torch.bfloat16) == (cpu, torch.float32)
    assert resolve_precision("cpu", "bfloat16", None) == (cpu, torch.bfloat16)  # slow but works
    assert resolve_precision("cpu", "float16", None) == (cpu, torch.float16)
    planned = resolve_precision("cuda:1", "auto", torch.bfloat16, present=False)
    assert planned == (torch.device("cuda", 1), torch.bfloat16)


@pytest.mark.parametrize(
    ("device", "dtype", "message"),
    [
        ("gpu", "auto", "unknown --device 'gpu'"),
        ("cuda:x", "auto", "unknown --device 'cuda:x'"),
        ("cpu", "fp16", "unknown --dtype 'fp16'"),
        ("cpu", "int8", "unknown --dtype 'int8'"),
    ],
)
def test_bad_device_and_dtype_strings(device, dtype, message):
    with pytest.raises(ConfigError, match=message):
        resolve_precision(device, dtype, None)


def test_devices_this_machine_lacks(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA GPU; use cpu"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    with pytest.raises(ConfigError, match=r"has 1 CUDA GPU\(s\), cuda:0\.\.cuda:0"):
        resolve_device("cuda:3")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="MPS backend is not available"):
        resolve_device("mps")
    with pytest.raises(ConfigError, match="name the one to plan for"):
        resolve_precision("auto", "auto", None, present=False)


def test_live_bytes_counts_new_tensors_while_they_live():
    with FakeTensorMode():
        x = torch.empty(1000, 1000)
        with LiveBytes() as tracker:
            y = x * 2  # 4 MB
            z = (y + 1).t()  # 4 MB more; the transpose is a view
            del y
            w = z * 3  # y is gone: still 8 MB at most
            del w, z
    assert tracker.peak == 8_000_000
    assert tracker.live == 0


def test_compress_refuses_a_run_that_does_not_fit_before_loading(monkeypatch, tmp_path):
    import pqorder.models.loading
    import pqorder.plan

    monkeypatch.setattr(pqorder.plan, "host_available", lambda: GIB // 4)

    def never(*_a, **_k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(pqorder.models.loading, "load_model", never)
    args = ["compress", "-p", "sparsegpt:ratio=0.5", "-o", str(tmp_path / "m"), "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code != 0
    message = str(res.exception)
    assert (
        message.startswith("needs ") and "GiB on host RAM" in message and "0.25 GiB free" in message
    )
    assert not (tmp_path / "m").exists()
