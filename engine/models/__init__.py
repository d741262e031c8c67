"""Models in and out: sources (where a model comes from), loading (with a memory check), checkpoints that
are already quantized, export to GPTQ / AWQ / bitsandbytes / float, text data, and the setup step.

Read in order: paths (typed paths in messages) -> sources -> loading -> checkpoints -> data -> export; prepare
is `python -m engine.models.prepare`.
"""
