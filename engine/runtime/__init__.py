"""Running a model: the shared token loop, generation, the static-cache decode loop, the quantized KV cache,
and generation with its memory measured.

Read in order: greedy -> generation -> kv_cache -> decode -> measured.
"""
