"""Evaluators: every result carries the protocol that produced it."""

from pqorder.eval.perplexity import PerplexityProtocol, PerplexityResult, evaluate_perplexity

__all__ = ["PerplexityProtocol", "PerplexityResult", "evaluate_perplexity"]
