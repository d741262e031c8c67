"""The one default evaluation set: which text and which windows every page scores perplexity on.

Perplexity depends on the windows as much as on the model (SmolLM2-135M's reference scores 72.93 on the
first 4 held-out windows of the Britannica text and 65.57 on the first 2), so the Evaluate grid and the
Methods lab start from the same set and each says which windows it scored (`describe_windows`).

The set: the held-out second half of the offline Britannica text (the Methods lab calibrates on the
first half), cut into consecutive windows of 256 tokens, the first 4 of them: 1,020 scored tokens (the
first token of a window has nothing to predict it), a few seconds per cell or method on two CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.models.data import CORPORA, WindowSpec


@dataclass(frozen=True)
class EvalSet:
    corpus: str = "britannica"  # a key of engine.models.data.CORPORA
    windows: int = 4  # consecutive windows from the start of the held-out half
    window: int = 256  # tokens per window

    @property
    def spec(self) -> WindowSpec:
        return WindowSpec(self.window, self.windows, split="evaluation")


DEFAULT_EVAL_SET = EvalSet()


def corpus_name(corpus: str) -> str:
    """'Encyclopaedia Britannica', 'Python documentation topics', ...; 'the uploaded text' otherwise."""
    return CORPORA[corpus].split(" (")[0].split(",")[0] if corpus in CORPORA else "the uploaded text"


def describe_windows(windows: int, window: int, corpus: str) -> str:
    """'4 windows × 256 tokens (the first 1,024 of the held-out second half of the Britannica …)'."""
    text = CORPORA.get(corpus, "the uploaded text").split(" — ")[0]  # the description's first clause
    where = "the uploaded text" if corpus not in CORPORA else text
    return (
        f"{windows} window{'s' if windows != 1 else ''} × {window} tokens (the first {windows * window:,} "
        f"tokens of the held-out second half of {where})"
    )


def is_default(windows: int, window: int, corpus: str) -> bool:
    """Whether these windows are the default evaluation set (so numbers match across pages)."""
    default = DEFAULT_EVAL_SET
    return (corpus, windows, window) == (default.corpus, default.windows, default.window)
