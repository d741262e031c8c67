"""`python -m engine.prepare`: convert the offline default model once (setup step; fast when done)."""

from __future__ import annotations

import sys
import time

from engine.sources import ModelSourceError, prepare_default_model


def main() -> int:
    start = time.perf_counter()
    try:
        folder = prepare_default_model(
            lambda fraction, message: print(f"[{fraction:4.0%}] {message}", flush=True)
        )
    except ModelSourceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Default model ready in {folder} ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
