"""Offline corpora, uploads and token windows."""

from __future__ import annotations

import pytest
import torch

from engine.models.data import (
    DataError,
    WindowSpec,
    clean_britannica,
    decode_upload,
    load_text,
    token_windows,
)
from tests.conftest import build_char_tokenizer


def test_britannica_is_clean_prose():
    text = load_text("britannica")
    assert len(text) > 200_000
    assert text.startswith("Shakespeare, William (1564--1616)")
    assert "### START" not in text and "\np.772:0" not in text


def test_clean_britannica_joins_hyphens_and_lines():
    raw = "### START: x ###\np.772:0\n\nHe was a yeo-\nman of the\ncounty.\n\nNext para."
    assert clean_britannica(raw) == "He was a yeoman of the county.\n\nNext para."


def test_pydoc_corpus_needs_no_install():
    assert "assert" in load_text("pydoc") and len(load_text("pydoc")) > 100_000


def test_unknown_corpus():
    with pytest.raises(DataError, match="Unknown corpus"):
        load_text("imagenet")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"", "at least 200"),
        (b"short text", "at least 200"),
        (b"\x00\x01\x02" * 200, "binary"),
        (bytes(range(1, 32)) * 40, "non-printable"),
        (b"x" * (21 * 1024 * 1024), "limit is 20 MiB"),
    ],
)
def test_bad_uploads(payload, message):
    with pytest.raises(DataError, match=message):
        decode_upload(payload)


def test_latin1_upload_is_accepted():
    text = ("caf\xe9 au lait, cr\xe8me br\xfbl\xe9e. " * 20).encode("latin-1")
    assert decode_upload(text).startswith("café")


def test_windows_do_not_overlap_between_calibration_and_evaluation():
    tokenizer = build_char_tokenizer()
    text = "".join(chr(ord("a") + i % 26) for i in range(4000))
    calibration = token_windows(tokenizer, text, WindowSpec(window=64, count=10, seed=3))
    evaluation = token_windows(tokenizer, text, WindowSpec(window=64, count=10, split="evaluation"))
    assert calibration.shape == (10, 64) and evaluation.shape == (10, 64)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]
    assert torch.equal(evaluation[0], ids[2000:2064])  # evaluation tiles the second half
    again = token_windows(tokenizer, text, WindowSpec(window=64, count=10, seed=3))
    assert torch.equal(calibration, again)  # seeded


def test_text_too_short_for_a_window():
    with pytest.raises(DataError, match="fewer than one window"):
        token_windows(build_char_tokenizer(), "a" * 300, WindowSpec(window=256))
    with pytest.raises(DataError, match="at least 8"):
        WindowSpec(window=4)
