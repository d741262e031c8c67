"""Scoring a variant against the reference: perplexity and KL / top-1 over token windows, the
Qllm-Eval-style study grid, and token-level comparison of one continuation.

Read in order: evalset (the default windows every page scores) -> perplexity -> study -> token_compare.
"""
