"""`python -m engine.models.prepare`: convert the offline default model and fetch the offline corpus, once.

A setup step run by `make run` / `make test`; when everything is in the cache it returns at once.
"""

from __future__ import annotations

import sys
import time

from engine.models.data import DataError, prepare_britannica
from engine.models.sources import ModelSourceError, prepare_default_model


def report(fraction: float, message: str) -> None:
    print(f"[{fraction:4.0%}] {message}", flush=True)


def main() -> int:
    start = time.perf_counter()
    try:
        folder = prepare_default_model(report)
        corpus = prepare_britannica(report)
    except (ModelSourceError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Default model in {folder}; corpus in {corpus} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
