"""The Learn page's QAT lesson: the STE staircase picture, and the seeded spiral demo showing PTQ losing
accuracy at low bits and QAT winning it back (moved here from tests/engine/quant/test_ste.py)."""

from __future__ import annotations

import pytest
import torch

from engine.lessons.qat_spiral import SpiralTask, qat_step_staircase, run_qat_demo


def test_staircase_picture():
    stair = qat_step_staircase(bits=3)
    assert torch.unique(stair.forward).numel() == 8
    inside = (stair.x > stair.low) & (stair.x < stair.high)
    away_from_edges = ((stair.x - stair.low).abs() > 1e-3) & ((stair.x - stair.high).abs() > 1e-3)
    assert torch.equal(stair.ste_gradient[away_from_edges], inside[away_from_edges].float())
    assert set(stair.ste_gradient.tolist()) == {0.0, 1.0}
    assert stair.low == pytest.approx(-4.5 / 3) and stair.high == pytest.approx(3.5 / 3)


@pytest.fixture(scope="module")
def reports():
    return {(bits, seed): run_qat_demo(bits, steps=400, seed=seed) for bits, seed in ((2, 0), (3, 0), (3, 1))}


def test_float_model_learns_the_spiral(reports):
    for report in reports.values():
        assert report.float_accuracy >= 0.97
        assert len(report.float_curve) == SpiralTask().float_steps


@pytest.mark.parametrize("seed", [0, 1])
def test_qat_recovers_what_ptq_loses_at_3_bits(reports, seed):
    report = reports[(3, seed)]
    assert report.ptq_accuracy <= report.float_accuracy - 0.15, "PTQ should visibly hurt at 3 bits"
    assert report.qat_accuracy >= 0.95
    assert report.qat_accuracy - report.ptq_accuracy >= 0.2
    assert report.recovered >= 0.8
    assert len(report.qat_curve) == 400
    assert f"{report.qat_accuracy:.1%}" in report.takeaway


def test_qat_beats_ptq_at_2_bits(reports):
    report = reports[(2, 0)]
    assert report.ptq_accuracy <= 0.6
    assert report.qat_accuracy - report.ptq_accuracy >= 0.2


def test_gradient_check_shows_identity_backward(reports):
    check = reports[(3, 0)].gradient_check
    assert check.max_abs_difference <= 1e-6 * max(check.gradient_norm, 1.0)
    assert check.gradient_norm > 0


def test_demo_progress_and_determinism():
    threads = torch.get_num_threads()
    seen = []
    small = SpiralTask(train_points=600, test_points=300, float_steps=60)
    first = run_qat_demo(3, steps=20, seed=5, progress=lambda f, m: seen.append(f), task=small)
    second = run_qat_demo(3, steps=20, seed=5, task=small)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    assert first.qat_curve == second.qat_curve
    assert first.scheme.label == "int3 channel"
    assert torch.get_num_threads() == threads, "the demo must restore the thread count"
