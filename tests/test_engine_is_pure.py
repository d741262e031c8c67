"""DESIGN rule 1: the engine never imports streamlit (checked in a fresh interpreter)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_engine_leaves_streamlit_out():
    code = (
        "import sys, pkgutil, importlib, engine\n"
        "for m in pkgutil.walk_packages(engine.__path__, 'engine.'):\n"
        "    if m.name.endswith('.__main__'):\n"  # a command (python -m engine.sizing), not a module to import
        "        continue\n"
        "    try:\n"
        "        importlib.import_module(m.name)\n"
        "    except ModuleNotFoundError as e:\n"  # the Triton kernels' modules, where Triton is not installed
        "        assert e.name == 'triton', e\n"
        "assert 'streamlit' not in sys.modules, 'engine imported streamlit'\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_no_engine_file_mentions_streamlit_imports():
    offenders = [
        path.name
        for path in (ROOT / "engine").rglob("*.py")
        if "import streamlit" in path.read_text() or "from streamlit" in path.read_text()
    ]
    assert offenders == []
