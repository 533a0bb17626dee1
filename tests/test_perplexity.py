"""Perplexity protocol on the real model and text."""

import pytest

from pqorder.errors import ConfigError
from pqorder.eval.perplexity import PerplexityProtocol, evaluate_perplexity
from pqorder.pipeline import parse_pipeline, run_pipeline
from tests.conftest import TEST_PROTOCOL


def test_dense_perplexity_on_emma_matches_reference(smol):
    # ASSETS.md: 31.4 on 8,192 tokens of Emma in 512-token windows.
    protocol = PerplexityProtocol("austen:emma", seqlen=512, max_tokens=8192, batch_size=4)
    result = evaluate_perplexity(smol.model, smol.tokenizer, protocol, progress=False)
    assert 30.5 < result.perplexity < 32.5
    assert (result.tokens, result.windows) == (8192, 16)
    assert result.to_dict()["protocol"]["seqlen"] == 512


def test_int8_per_channel_within_one_percent(smol, dense_ppl):
    run_pipeline(smol, parse_pipeline("rtn:bits=8"), progress=False)
    ppl = evaluate_perplexity(smol.model, smol.tokenizer, TEST_PROTOCOL, progress=False)
    assert abs(ppl.perplexity / dense_ppl - 1) < 0.01


def test_heavier_compression_hurts_more(smol, dense_ppl):
    run_pipeline(smol, parse_pipeline("rtn:bits=3"), progress=False)
    ppl3 = evaluate_perplexity(smol.model, smol.tokenizer, TEST_PROTOCOL, progress=False)
    assert ppl3.perplexity > 1.2 * dense_ppl


@pytest.mark.parametrize(
    "protocol",
    [
        PerplexityProtocol(seqlen=1),
        PerplexityProtocol(seqlen=512, max_tokens=100),
        PerplexityProtocol(batch_size=0),
    ],
)
def test_bad_protocols(smol, protocol):
    with pytest.raises(ConfigError):
        evaluate_perplexity(smol.model, smol.tokenizer, protocol, progress=False)
