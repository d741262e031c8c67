"""Running a model: token-by-token generation, the static-cache decode loop, and the quantized KV cache.

Read in order: generation -> kv_cache -> decode.
"""
