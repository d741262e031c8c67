"""Error metrics and logit comparisons against hand-computed values."""

import math

import pytest
import torch

from engine.quant.metrics import (
    error_summary,
    kl_divergence,
    max_abs_err,
    mse,
    relative_error,
    sqnr_db,
    top1_agreement,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def test_known_values():
    x = torch.ones(100)
    y = x * 1.1
    assert mse(x, y) == pytest.approx(0.01)
    assert sqnr_db(x, y) == pytest.approx(20.0)
    assert relative_error(x, y) == pytest.approx(0.1)
    assert max_abs_err(x, torch.tensor([1.0] * 99 + [3.0])) == pytest.approx(2.0)


def test_identity_and_zero_edge_cases():
    x = torch.randn(10)
    assert sqnr_db(x, x) == math.inf and mse(x, x) == 0 and relative_error(x, x) == 0
    zeros = torch.zeros(10)
    assert sqnr_db(zeros, x) == -math.inf and relative_error(zeros, x) == math.inf
    assert relative_error(zeros, zeros) == 0.0


def test_summary_matches_individual_metrics_and_accepts_low_precision():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 64, generator=g)
    y = (x + 0.01 * torch.randn(256, 64, generator=g)).bfloat16()
    summary = error_summary(x, y)
    assert set(summary) == {"mse", "sqnr_db", "max_abs_err", "relative_error"}
    assert summary["mse"] == pytest.approx(mse(x, y))
    assert summary["sqnr_db"] == pytest.approx(sqnr_db(x, y))
    assert summary["max_abs_err"] == pytest.approx(max_abs_err(x, y))
    assert summary["relative_error"] == pytest.approx(relative_error(x, y))
    assert summary["sqnr_db"] == pytest.approx(-20 * math.log10(summary["relative_error"]))
    assert all(isinstance(v, float) for v in summary.values())
    with pytest.raises(ValueError, match="shapes differ"):
        mse(x, y[:-1])


def test_kl_divergence():
    ref = torch.tensor([[0.0, 0.0]])
    assert kl_divergence(ref, ref) == pytest.approx(0.0, abs=1e-7)
    logits = torch.log(torch.tensor([[0.9, 0.1]]))
    # KL(0.5, 0.5 || 0.9, 0.1) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1)
    expected = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert kl_divergence(ref, logits) == pytest.approx(expected, rel=1e-6)
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(2, 7, 50, generator=g), torch.randn(2, 7, 50, generator=g)
    per_position = [kl_divergence(a[i, j], b[i, j]) for i in range(2) for j in range(7)]
    assert kl_divergence(a, b) == pytest.approx(sum(per_position) / 14, rel=1e-5)  # mean over positions
    assert kl_divergence(a.half(), b.half()) >= 0
    with pytest.raises(ValueError, match="logit shapes differ"):
        kl_divergence(a, b[:, :-1])


def test_top1_agreement():
    ref = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])  # (1, 4 positions, 2 tokens)
    other = torch.tensor([[[2.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 3.0]]])
    assert top1_agreement(ref, other) == 0.75
    assert top1_agreement(ref, ref) == 1.0
