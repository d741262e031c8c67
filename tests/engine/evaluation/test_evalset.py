"""The one default evaluation set: both pages start from it, and a caption can name what was scored."""

from __future__ import annotations

from engine.evaluation.evalset import DEFAULT_EVAL_SET, corpus_name, describe_windows, is_default
from engine.models.data import CORPORA


def test_the_default_set_is_named_in_words():
    default = DEFAULT_EVAL_SET
    assert default.corpus in CORPORA and default.spec.split == "evaluation"
    assert (default.windows, default.window) == (default.spec.count, default.spec.window)
    words = describe_windows(4, 256, "britannica")
    assert words.startswith("4 windows × 256 tokens (the first 1,024 tokens of the held-out second half")
    assert "Britannica" in words
    assert describe_windows(1, 128, "upload").startswith("1 window × 128 tokens")
    assert "uploaded text" in describe_windows(1, 128, "upload")
    assert is_default(default.windows, default.window, default.corpus)
    assert not is_default(2, 256, "britannica")  # the Methods lab's old default: other windows
    assert corpus_name("britannica") == "Encyclopaedia Britannica"
    assert corpus_name("upload") == "the uploaded text"
