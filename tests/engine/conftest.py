"""Fixtures for the quantization-core tests (schemes, formats, primitives, observers, metrics, priorgrid)."""

from __future__ import annotations
