"""Fixtures for the quantization-core tests (schemes, formats, primitives, observers, metrics, priorgrid)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def single_thread():
    """Run a test on one torch thread, then restore the count.

    The core's tests use small tensors, where two OpenMP threads gain nothing, and on a machine shared
    with other CPU-heavy jobs their barrier waits made the suite ~4x slower (47 s instead of 13 s).
    Opt in per module with `pytestmark = pytest.mark.usefixtures("single_thread")`.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
