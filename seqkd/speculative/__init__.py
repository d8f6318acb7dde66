"""Speculative decoding: the acceptance rule, an exact decoder for both model families, and its metrics."""

from seqkd.speculative.acceptance import Verdict, greedy_accept, sample_accept
from seqkd.speculative.decoder import SpecOutput, autoregressive_generate, processed_probs, speculative_generate
from seqkd.speculative.metrics import SpecStats, analytic_acceptance, expected_tokens_per_call, leviathan_speedup

__all__ = [
    "SpecOutput", "SpecStats", "Verdict", "analytic_acceptance", "autoregressive_generate",
    "expected_tokens_per_call", "greedy_accept", "leviathan_speedup", "processed_probs", "sample_accept",
    "speculative_generate",
]
