"""Running a test file's gptqmodel side in a fresh process, and the calibration windows the cross-checks share.

gptqmodel's import changes process-wide settings (environment variables, logging), which the rest of the
suite must not inherit, so each test file that needs it runs itself as a script in a subprocess. Output
goes to a log file, not a pipe: gptqmodel's progress bars would fill a pipe and block the child.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[3]


def start(script: str, log: Path, *args: str) -> subprocess.Popen:
    """`python script *args` with the repo importable and GPTQMODEL_CPU_WORKERS >= 2 (its loader pool asks
    for two workers; a 2-CPU machine gives one by default)."""
    env = dict(os.environ, GPTQMODEL_CPU_WORKERS=os.environ.get("GPTQMODEL_CPU_WORKERS", "2"))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with log.open("w") as sink:
        return subprocess.Popen([sys.executable, script, *args], env=env, stdout=sink, stderr=sink)


def finish(process: subprocess.Popen, log: Path, timeout: float = 1800) -> None:
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


def run(script: str, log: Path, *args: str, timeout: float = 1800) -> None:
    finish(start(script, log, *args), log, timeout)


def crosscheck_windows(tokenizer):
    """(calibration 8 x 256, evaluation 4 x 256) token windows of the offline Britannica text."""
    from engine.models.data import WindowSpec, load_text, token_windows

    text = load_text("britannica")
    calibration = token_windows(tokenizer, text, WindowSpec(window=256, count=8))
    evaluation = token_windows(tokenizer, text, WindowSpec(window=256, count=4, split="evaluation"))
    return calibration, evaluation


KEPT_LAYERS = (*range(6), *range(24, 30))  # of the default model's 30: the first and last six


def truncated_default(loaded, folder: Path, keep: tuple[int, ...] = KEPT_LAYERS):
    """The default model with only the decoder layers `keep` (norm and tied head kept), saved as a
    safetensors folder gptqmodel can load; returns (model, folder).

    Both pipelines quantize the same smaller llama, so the end-to-end comparison is as strict as on the full
    model (each side's KL to the same float model) on 40% of the layers. The first layers make the
    massive activations and the last ones the predictions: without the last six the model's perplexity is
    ~1e9 and every quantization looks alike; with them it stays a language model.
    """
    import copy

    model = copy.deepcopy(loaded.model)
    model.model.layers = torch.nn.ModuleList([model.model.layers[i] for i in keep])
    for index, layer in enumerate(model.model.layers):
        layer.self_attn.layer_idx = index
    model.config.num_hidden_layers = len(keep)
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    model.save_pretrained(folder)
    loaded.tokenizer.save_pretrained(folder)
    return model, folder
