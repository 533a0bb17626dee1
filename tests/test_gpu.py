"""Device checks that need a CUDA GPU (skipped cleanly without one; the suite passes on CPU).

Run them where a GPU exists: ``pytest -m gpu``. They check what the CPU tests cannot: real
movement between host and device, peak device memory with offload, and half-precision
compression on the device against the float32 CPU reference.
"""

from __future__ import annotations

import pytest
import torch

from pqorder.data.calibration import CalibrationSpec
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.hardware import resolve_hardware
from pqorder.models.adapter import compressible_units, decoder_blocks, get_weight
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_pipeline, run_pipeline

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
PIPELINE = "sparsegpt:ratio=0.5 > gptq:bits=4,group=128,sym=true"
CALIBRATION = CalibrationSpec("austen:pride", 16, 256, 0)
PROTOCOL = PerplexityProtocol("austen:emma", 512, 4096, 4)


def _compressed(device: str, dtype: str, offload: bool):
    lm = load_model("smollm2-135m", resolve_hardware(device, dtype, offload))
    torch.cuda.reset_peak_memory_stats()
    run_pipeline(lm, parse_pipeline(PIPELINE), CALIBRATION, progress=False)
    peak = torch.cuda.max_memory_allocated()
    ppl = evaluate_perplexity(lm.model, lm.tokenizer, PROTOCOL, progress=False).perplexity
    return lm, peak, ppl


def test_offload_matches_the_resident_model_and_uses_less_memory():
    resident, resident_peak, resident_ppl = _compressed("cuda", "bfloat16", offload=False)
    offloaded, offloaded_peak, offloaded_ppl = _compressed("cuda", "bfloat16", offload=True)
    for name, module in compressible_units(offloaded.model).items():
        other = resident.model.get_submodule(name)
        assert torch.equal(module.weight.cpu(), other.weight.cpu()), name
    assert offloaded_ppl == pytest.approx(resident_ppl, rel=1e-3)
    _, blocks = decoder_blocks(offloaded.model)
    assert all(p.device.type == "cpu" for b in blocks for p in b.parameters())
    assert offloaded_peak < resident_peak


def test_bfloat16_on_gpu_tracks_float32_on_cpu():
    gpu, _, gpu_ppl = _compressed("cuda", "bfloat16", offload=False)
    cpu = load_model("smollm2-135m")
    run_pipeline(cpu, parse_pipeline(PIPELINE), CALIBRATION, progress=False)
    cpu_ppl = evaluate_perplexity(cpu.model, cpu.tokenizer, PROTOCOL, progress=False).perplexity
    assert gpu_ppl == pytest.approx(cpu_ppl, rel=0.05)
    for name, module in compressible_units(gpu.model).items():
        c = gpu.state.get(name)
        w = get_weight(module).cpu()
        assert c.grid.contains(w, dtype=torch.bfloat16), name
        assert (w[~c.mask] == 0).all(), name
