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
