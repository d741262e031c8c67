"""The "Outliers and rotation" lesson on the default model (SmolLM2-135M): channel 507 is massive from layer
11 on, the super weights at (507, 1229) and (507, 1487) of layer 11's down_proj make it and zeroing them
breaks the model, and the rotation spreads the token's energy so int4 per-token scales stop zeroing its
channels. On a tiny Llama: rotating the measured residual is what a folded and rotated copy carries."""

from __future__ import annotations

import copy

import pytest
import torch

from engine.analysis.super_weights import WeightCoordinate
from engine.hooks import forward_hooks
from engine.lessons import outliers
from engine.methods.rotation import RotationConfig, rotate_model
from engine.quant.hadamard import RotationKind, rotation
from tests.conftest import build_tiny_llama

DOWN = "model.layers.11.mlp.down_proj"


@pytest.fixture(scope="module")
def lesson(default_loaded):
    down = default_loaded.model.get_submodule(DOWN)
    weight, values = down.weight, down.weight.detach().clone()
    result = outliers.outliers_lesson(default_loaded.model, outliers.lesson_window(default_loaded.tokenizer))
    assert down.weight is weight and torch.equal(weight, values)  # zeroed in a private view only
    return result


def test_channel_507_is_massive_from_layer_11_on(lesson):
    peaks = lesson.peaks
    assert lesson.tokens == outliers.WINDOW
    assert peaks.first_massive_layer == 11 and peaks.top_layer >= 11
    assert all(int(peaks.channel[layer]) == 507 for layer in range(11, 28))
    assert all(int(peaks.position[layer]) == 0 for layer in range(11, 28))  # on the first token
    assert float(peaks.peak[11]) > 1000 * float(peaks.median[11])
    assert int(peaks.massive[11:28].min()) > 0
    assert "channel 507 of the token at position 0" in peaks.takeaway


def test_super_weights_found_and_zeroing_them_breaks_the_model(lesson):
    step = lesson.super_weights
    assert step is not None
    assert {c.coordinate for c in step.weights} == {
        WeightCoordinate(DOWN, 507, 1229),
        WeightCoordinate(DOWN, 507, 1487),
    }
    assert len(step.random) == 2 and not set(step.random) & {c.coordinate for c in step.weights}
    assert step.reference_perplexity < 200
    assert step.zeroed_perplexity > 100 * step.reference_perplexity
    assert step.random_perplexity == pytest.approx(step.reference_perplexity, rel=0.01)
    assert step.zeroed_kl > 1 > 1e-3 > step.random_kl
    assert step.tensor_size == 576 * 1536
    assert f"{step.zeroed_perplexity:,.0f}" in step.takeaway


def test_rotation_stops_the_huge_channel_zeroing_the_others(lesson):
    token = lesson.token
    assert (token.channel, token.position) == (507, 0)
    assert token.max_over_rms_before > 10 * token.max_over_rms_after  # ~24 -> ~1.3
    assert token.before.norm() == pytest.approx(float(token.after.norm()), rel=1e-4)  # same length
    assert token.step_after < token.step_before / 10
    assert token.zeros_before > 0.9 * token.hidden > 10 > token.zeros_after
    assert token.error_before > 0.9 > 0.6 > token.error_after
    assert token.tensor_zeros_before > 0.99 and token.tensor_zeros_after > 0.9  # per tensor still fails
    assert f"{token.zeros_before} of its 576 channels round to zero" in token.takeaway


def test_every_layer_gets_flatter_and_int4_better(lesson):
    step = lesson.rotation
    assert step.note is None  # 576 = 72 x 8 has a Hadamard matrix
    assert float(step.ratio_before.max()) > 20 and float(step.ratio_after.max()) < 6
    assert step.drop > 4  # a per-token max / RMS cannot fall below ~1, nor start above √576 = 24
    assert bool((step.ratio_after < step.ratio_before).all())
    assert bool((step.sqnr_after > step.sqnr_before).all())
    assert float(step.sqnr_after.mean()) > float(step.sqnr_before.mean()) + 5


def test_rotating_the_residual_matches_a_rotated_model():
    model = build_tiny_llama()
    ids = torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(0))
    rotated = copy.deepcopy(model)
    rotate_model(rotated, RotationConfig())
    hidden, logits, normed = _run(model, ids)
    assert torch.allclose(model.get_output_embeddings()(normed), logits, atol=1e-5)  # the lesson's logits
    rotated_hidden, rotated_logits, _ = _run(rotated, ids)
    assert torch.allclose(rotated_logits, logits, atol=1e-4)
    assert torch.allclose(rotation(64, RotationKind.HADAMARD, 0).apply(hidden), rotated_hidden, atol=1e-4)


@torch.no_grad()
def _run(model, ids) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(layers, tokens, hidden) residual stream, logits and final-norm output, through the lesson's hooks."""
    captured: dict = {}
    with forward_hooks(outliers._capturing(model, captured)):
        logits = model(input_ids=ids).logits[0]
    return torch.stack(captured["layers"]), logits, captured["normed"]
