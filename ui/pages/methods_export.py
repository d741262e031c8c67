"""Save a model built on the Methods lab page as a checkpoint other tools load, and download it.

Each save goes to its own folder under the cache (`exports/`); the oldest are removed beyond KEEP so a
shared server's disk does not fill. The zip for the browser is built only when the download is clicked; a
GGUF export is one file, downloaded as it is. A GGUF file is packed from the loaded (reference) model's
weights, with the tokenizer and metadata of its source.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from engine.models.export import (
    FORMATS,
    GGUF_FORMATS,
    ExportError,
    available_formats,
    export_model,
    zip_folder,
)
from engine.models.gguf_export import GGUFSource
from engine.models.sources import cache_dir
from ui import cache
from ui.errors import show_error
from ui.progress import progress_bar

KEEP = 4  # export folders kept on disk (all sessions together), and at most KEEP_BYTES of them
KEEP_BYTES = 16 * 1024**3
SAVED = "methods_export_saved"  # session key: {run label + format: folder}


def exports_root() -> Path:
    root = cache_dir() / "exports"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _prune(root: Path, keep: int = KEEP, keep_bytes: int = KEEP_BYTES) -> None:
    """Remove the oldest export folders beyond `keep` of them or `keep_bytes` in all (newest always stays)."""
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime, reverse=True)
    total = 0
    for index, folder in enumerate(folders):
        total += sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
        if index > 0 and (index >= keep or total > keep_bytes):
            shutil.rmtree(folder, ignore_errors=True)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:60] or "model"


def render(runs: dict, tokenizer) -> None:
    """The export section for the runs on this page (`runs`: {label: MethodRun})."""
    st.subheader("Save a quantized model")
    if not runs:
        return
    labels = list(runs)
    left, right = st.columns([3, 2])
    label = left.selectbox("Model to save", labels, key="methods_export_run")
    run = runs[label]
    quantized, why = run.held()  # held for this script run, even if the store frees it meanwhile
    if quantized is None:
        st.info(why, icon=":material/memory:")
        return
    allowed = available_formats(quantized)
    choices = [fmt for fmt in FORMATS if allowed.get(fmt, "unknown") is None]
    if not choices:
        reasons = dict.fromkeys(w for w in allowed.values() if w)  # distinct, in order
        st.info("This model cannot be saved: " + "; ".join(reasons) + ".", icon=":material/block:")
        return
    fmt = right.radio(
        "Format", choices, format_func=lambda f: FORMATS[f], key="methods_export_format", horizontal=False
    )
    unavailable = {f: why for f, why in allowed.items() if why is not None and f != "bnb"}
    if unavailable:
        st.caption(
            "Not offered for this model: " + "; ".join(f"**{f}**: {w}" for f, w in unavailable.items())
        )
    if fmt in ("dequantized", "gguf_f16"):
        st.caption(
            "A dequantized checkpoint holds the quantized values in float16: it reproduces this model's "
            "weights anywhere, but saves no memory, and any activation quantization is not part of it."
        )
    saved = st.session_state.setdefault(SAVED, {})
    key = f"{label} · {fmt}"
    if st.button("Save checkpoint", key="methods_export_save"):
        root = exports_root()
        folder = Path(tempfile.mkdtemp(prefix=f"{_slug(label)}-{fmt}-", dir=root))
        update, clear = progress_bar()
        try:
            source = None
            if fmt in GGUF_FORMATS:  # packed from the model the runs were built from (the one loaded)
                loaded = cache.current_model()
                source = GGUFSource(loaded.model, loaded.folder)
            result = export_model(quantized, folder, fmt, tokenizer=tokenizer, progress=update, source=source)
            saved[key] = str(result.folder)
            _prune(root)
        except (ExportError, OSError) as exc:
            shutil.rmtree(folder, ignore_errors=True)
            show_error(exc, prefix="Could not save: ")
        finally:
            clear()
    folder = Path(saved.get(key, ""))
    if not saved.get(key) or not folder.is_dir():
        st.caption("Saved checkpoints go to the server's cache folder; a download button appears here.")
        return
    files = pd.DataFrame(
        [{"file": p.name, "MB": p.stat().st_size / 1e6} for p in sorted(folder.iterdir()) if p.is_file()]
    )
    total = files["MB"].sum()
    st.success(f"Saved {fmt} checkpoint ({total:,.1f} MB) to `{folder}`.", icon=":material/save:")
    st.dataframe(files, hide_index=True, column_config={"MB": st.column_config.NumberColumn(format="%.2f")})
    if fmt in GGUF_FORMATS:
        gguf_download(folder)
        return
    st.download_button(
        f"Download {folder.name}.zip",
        data=lambda folder=folder: zip_folder(folder),
        file_name=f"{folder.name}.zip",
        mime="application/zip",
        key="methods_export_download",
    )
    loader = {
        "gptq": "transformers with optimum + gptqmodel",
        "awq": "transformers with gptqmodel",
        "bnb": "transformers with bitsandbytes",
        "dequantized": "transformers (or any tool reading safetensors)",
    }[fmt]
    st.caption(
        f"Load it with `AutoModelForCausalLM.from_pretrained(folder)` ({loader}), or pick it in the sidebar "
        "as a local folder."
    )


def gguf_download(folder: Path) -> None:
    """The .gguf file itself (llama.cpp runs it as it is), and how to run or load it."""
    path = next(folder.glob("*.gguf"), None)
    if path is None:
        return
    st.download_button(
        f"Download {path.name}",
        data=lambda path=path: path.read_bytes(),
        file_name=path.name,
        mime="application/octet-stream",
        key="methods_export_download",
    )
    st.caption(
        f"Run it with llama.cpp: `llama-cli -m {path.name}`. Transformers reads it too (as float weights): "
        f'`AutoModelForCausalLM.from_pretrained(folder, gguf_file="{path.name}")`.'
    )
