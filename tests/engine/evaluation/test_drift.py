"""llama.cpp's --kl-divergence statistics: a hand-computed example, the uncertainties, and the wiring into
evaluate_against_reference."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from engine.evaluation.drift import DriftParts, TokenDrift, drift_stats, percentile
from engine.evaluation.perplexity import _compare_rows, _Tally, evaluate_against_reference
from tests.conftest import build_tiny_llama

pytestmark = pytest.mark.usefixtures("single_thread")
ln = math.log


def exact(value):
    """Equal up to float32 rounding (the pass computes in float32, as llama.cpp does)."""
    return pytest.approx(value, rel=1e-5, abs=1e-7)


def _hand_example() -> TokenDrift:
    """Three positions over a 2-token vocabulary, through the comparison pass's own code.

    1. ref p = (2/3, 1/3), cand (1/4, 3/4), next token 0: top-1 differs, Δp = 1/4 - 2/3 = -5/12
    2. ref = cand = (1/4, 3/4), next token 1: KL 0, Δp 0
    3. ref (3/4, 1/4), cand (2/3, 1/3), next token 1: Δp = 1/3 - 1/4 = 1/12
    """
    ref = torch.tensor([[ln(2), 0.0], [0.0, ln(3)], [ln(3), 0.0]])
    cand = torch.tensor([[0.0, ln(3)], [0.0, ln(3)], [ln(2), 0.0]])
    tally = _Tally()
    _compare_rows(ref, cand, torch.tensor([0, 1, 1]), tally)
    return DriftParts.join([tally.drift])


def test_every_statistic_matches_a_hand_computation():
    stats = drift_stats(_hand_example())
    k1 = 2 / 3 * ln((2 / 3) / (1 / 4)) + 1 / 3 * ln((1 / 3) / (3 / 4))
    k3 = 3 / 4 * ln((3 / 4) / (2 / 3)) + 1 / 4 * ln((1 / 4) / (1 / 3))
    kl = [0.0, k3, k1]  # sorted
    assert stats.positions == 3
    # PPL: candidate NLLs ln 4, ln 4/3, ln 3; reference ln 3/2, ln 4/3, ln 4: mean difference (ln 2) / 3
    assert stats.ln_ppl_ratio == exact(ln(2) / 3)
    assert stats.ppl_ratio == exact(2 ** (1 / 3))
    # llama.cpp estimates no uncertainty from 10 values or fewer (it prints 0; we say NaN)
    for unknown in (
        "ln_ppl_ratio_unc",
        "ppl_ratio_unc",
        "ln_ppl_correlation",
        "kl_mean_unc",
        "p_diff_mean_unc",
    ):
        assert math.isnan(getattr(stats, unknown)), unknown
    assert math.isnan(stats.p_diff_rms_unc)
    assert stats.kl_mean == exact((k1 + k3) / 3)
    assert (stats.kl_min, stats.kl_max) == (exact(0.0), exact(k1))
    assert stats.kl_median == exact(k3)  # the middle of three
    # llama.cpp's rule: index f x (n - 1) = 2f, interpolated between its neighbours
    for field, f in (("kl_p999", 0.999), ("kl_p99", 0.99), ("kl_p95", 0.95), ("kl_p90", 0.90)):
        assert getattr(stats, field) == exact((2 - 2 * f) * k3 + (2 * f - 1) * k1), field
    for field, f in (("kl_p10", 0.10), ("kl_p5", 0.05), ("kl_p1", 0.01), ("kl_p01", 0.001)):
        assert getattr(stats, field) == exact(2 * f * kl[1]), field
    dp = [-5 / 12, 0.0, 1 / 12]  # sorted
    assert stats.p_diff_mean == exact(-1 / 9)
    assert (stats.p_diff_min, stats.p_diff_max, stats.p_diff_median) == (
        exact(-5 / 12),
        exact(1 / 12),
        exact(0.0),
    )
    for field, f in (("p_diff_p999", 0.999), ("p_diff_p99", 0.99), ("p_diff_p95", 0.95),
                     ("p_diff_p90", 0.90), ("p_diff_p75", 0.75)):  # fmt: skip
        assert getattr(stats, field) == exact((2 * f - 1) * dp[2]), field
    for field, f in (("p_diff_p25", 0.25), ("p_diff_p10", 0.10), ("p_diff_p5", 0.05),
                     ("p_diff_p1", 0.01), ("p_diff_p01", 0.001)):  # fmt: skip
        assert getattr(stats, field) == exact((1 - 2 * f) * dp[0]), field
    assert stats.p_diff_rms == exact(math.sqrt((25 / 144 + 1 / 144) / 3))
    assert stats.same_top == exact(2 / 3)
    assert stats.same_top_unc == exact(math.sqrt(2 / 3 * 1 / 3 / 2))  # sqrt(p (1 - p) / (n - 1))
    lines = stats.lines()
    assert f"Mean PPL(Q)/PPL(base)         : {2 ** (1 / 3):10.6f} ±        nan" in lines
    assert " 5.0%   KLD:   0.001642" in lines and "Same top p: 66.667 ± 33.333 %" in lines


def test_percentile_follows_llama_cpps_index_rule():
    values = torch.tensor([1.0, 2.0, 4.0, 8.0])
    assert percentile(values, 0.0) == 1.0 and percentile(values, 1.0) == 8.0
    assert percentile(values, 0.5) == 3.0  # index 1.5
    assert percentile(values, 0.9) == pytest.approx(0.3 * 4 + 0.7 * 8, rel=1e-6)  # index 2.7


def test_uncertainties_are_standard_errors_from_eleven_positions_on():
    generator = torch.Generator().manual_seed(0)
    n = 40
    ref_logp = -torch.rand(n, generator=generator) * 3
    cand_logp = ref_logp + 0.3 * torch.randn(n, generator=generator)
    cand_logp = cand_logp.clamp(max=0.0)
    kl = torch.rand(n, generator=generator)
    same = torch.rand(n, generator=generator) > 0.3
    stats = drift_stats(TokenDrift(kl, ref_logp, cand_logp, same))
    a, b = -cand_logp.double(), -ref_logp.double()
    se = lambda x: float(x.double().std() / math.sqrt(n))  # noqa: E731 (sample std / sqrt(n))
    assert stats.kl_mean_unc == pytest.approx(se(kl), rel=1e-6)
    assert stats.ln_ppl_ratio_unc == pytest.approx(se(a - b), rel=1e-6)
    assert stats.ppl_ratio_unc == pytest.approx(stats.ppl_ratio * se(a - b), rel=1e-6)
    assert stats.ln_ppl_correlation == pytest.approx(
        float(torch.corrcoef(torch.stack([a, b]))[0, 1]), rel=1e-6
    )
    dp = (cand_logp.exp() - ref_logp.exp()).double()
    assert stats.p_diff_mean_unc == pytest.approx(se(dp), rel=1e-5)
    assert stats.p_diff_rms_unc == pytest.approx(0.5 * se(dp**2) / stats.p_diff_rms, rel=1e-5)
    share = float(same.double().mean())
    assert stats.same_top_unc == pytest.approx(math.sqrt(share * (1 - share) / (n - 1)))


def test_evaluate_against_reference_carries_the_statistics_of_the_same_pass():
    model = build_tiny_llama()
    other = copy.deepcopy(model)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.add_(
                0.05
                * parameter.std()
                * torch.randn(parameter.shape, generator=torch.Generator().manual_seed(1))
            )
    ids = torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    result = evaluate_against_reference(model, other, ids)
    agreement, drift = result.agreement, result.agreement.drift
    assert drift.positions == agreement.token_count == 2 * 23 and len(drift.per_token) == 46
    assert drift.kl_mean == pytest.approx(agreement.mean_kl, rel=1e-5)
    assert drift.kl_max == pytest.approx(agreement.max_kl, rel=1e-6)
    assert drift.same_top == agreement.top1_agreement
    assert drift.ppl_ratio == pytest.approx(
        result.candidate.perplexity / result.reference.perplexity, rel=1e-5
    )
    assert drift.per_token.kl.dtype == torch.float32 and drift.per_token.same_top.dtype == torch.bool
    itself = evaluate_against_reference(model, model, ids).agreement.drift  # the reference against itself
    assert (
        itself.kl_max == pytest.approx(0.0, abs=1e-6) and itself.p_diff_rms == 0.0 and itself.same_top == 1.0
    )
