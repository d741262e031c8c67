"""Massive activations and the attention sink: measured on the default model, logic on a tiny random Llama."""

from __future__ import annotations

import pytest
import torch

from engine.analysis.massive import eager_view, massive_activations
from engine.models.data import WindowSpec, load_text, token_windows
from tests.conftest import build_tiny_llama

MASSIVE_CHANNEL = 507  # SmolLM2-135M: ~24,800 from layer 11 on, on the first token of every window


@pytest.fixture(scope="module")
def measured(default_loaded):
    text = load_text("britannica")
    ids = token_windows(default_loaded.tokenizer, text, WindowSpec(48, 2, split="calibration"))
    return massive_activations(default_loaded.model, ids)


def test_channel_507_is_massive_from_layer_11_on_the_first_token(measured):
    assert measured.massive_channels()[0] == MASSIVE_CHANNEL
    layers = measured.massive_layers(MASSIVE_CHANNEL)
    assert layers[0] == 11 and len(layers) >= 15  # measured: layers 11 to 27
    for layer in range(11, 28):
        assert int(measured.peak_channel[layer]) == MASSIVE_CHANNEL
        assert int(measured.peak_position[layer]) == 0
        assert float(measured.peak[layer]) > 10_000  # measured ~24,800
        assert float(measured.peak_ratio[layer]) > 1_000
    assert measured.first_token_share() > 0.95  # measured 1.0
    assert all(c.position == 0 for c in measured.carriers)
    assert len(measured.carriers) == 2  # one first token per window


def test_later_layers_attend_to_the_first_token(measured):
    first = measured.first_token_attention  # (layers, heads)
    assert first.shape == (30, 9)
    assert float(first[:2].mean()) < 0.1  # measured ~0.02: no sink yet
    late = first[12:].mean(1)  # measured 0.35 to 0.74 per layer
    assert float((late > 0.25).float().mean()) >= 0.8


def test_the_shared_model_keeps_its_attention_and_hooks(default_loaded, measured):
    model = default_loaded.model
    assert model.config._attn_implementation != "eager"
    assert all(not m._forward_hooks for m in model.modules())


def test_eager_view_shares_weights_not_config():
    model = build_tiny_llama()
    before = model.config._attn_implementation
    view = eager_view(model)
    assert view.config._attn_implementation == "eager"
    assert model.config._attn_implementation == before
    assert view.lm_head.weight is model.lm_head.weight


def test_tiny_model_shapes_and_ranges():
    model = build_tiny_llama()
    ids = torch.randint(3, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    result = massive_activations(model, ids, absolute=0.0, ratio=1.0)
    assert result.first_token_attention.shape == (2, 4)
    assert bool(((result.first_token_attention > 0) & (result.first_token_attention <= 1)).all())
    assert result.channel_absmax.shape == (2, 64)
    for layer in range(2):
        assert float(result.peak[layer]) == pytest.approx(float(result.channel_absmax[layer].max()))
    assert result.carriers  # every value beyond the median counts with these thresholds


@pytest.mark.parametrize(
    "ids, reason",
    [
        (torch.arange(10), "windows, tokens"),
        (torch.zeros(2, 8), "integers"),
        (torch.zeros(2, 1, dtype=torch.long), "at least 2 tokens"),
    ],
)
def test_bad_windows_are_refused(ids, reason):
    with pytest.raises(ValueError, match=reason):
        massive_activations(build_tiny_llama(), ids)
