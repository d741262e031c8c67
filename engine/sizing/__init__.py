"""Memory sizing from a config alone (never weights): parameter counts, weight presets, the estimate,
GPUs, configs and the catalog, measurement against the estimate, and the CLI (`python -m engine.sizing`).

Read in order: parameters -> presets -> estimate -> gpus -> configs / catalog -> measure -> cli.
"""
