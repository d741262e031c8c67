"""Each Learn lesson shows the direction it claims on its own seeded data, and its takeaway says so."""

from __future__ import annotations

import math

import pytest
import torch

from engine import lessons
from tests.conftest import build_char_tokenizer, build_tiny_llama


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_nf4_beats_int4_on_bell_shaped_data(distribution):
    lesson = lessons.mapping_lesson(distribution, block=64)
    assert lesson.mse["nf4"] < lesson.mse["int4"] / 1.2
    assert "NF4's MSE is" in lesson.takeaway
    assert f"{lesson.mse['int4'] / lesson.mse['nf4']:.2f}x" in lesson.takeaway


def test_int4_beats_nf4_on_uniform_data():
    lesson = lessons.mapping_lesson("uniform", block=64)
    assert lesson.mse["int4"] < lesson.mse["nf4"] / 1.2
    assert "int4's MSE is" in lesson.takeaway and "Best of the three: INT4" in lesson.takeaway


def test_mapping_levels_and_normalisation():
    lesson = lessons.mapping_lesson("gaussian", block=16)
    assert {name: len(levels) for name, levels in lesson.levels.items()} == {"int4": 15, "nf4": 16, "fp4": 15}
    assert lesson.normalized.abs().max() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="does not divide"):
        lessons.mapping_lesson("gaussian", block=48)
    with pytest.raises(ValueError, match="unknown distribution"):
        lessons.mapping_lesson("cauchy")


@pytest.mark.parametrize("data", ["relu", "silu"])
def test_asymmetric_wins_on_one_sided_data(data):
    lesson = lessons.symmetry_lesson(data, bits=4)
    assert lesson.mse["asymmetric"] < lesson.mse["symmetric"] / 2
    assert lesson.codes_used["symmetric"] <= 2**3 + 1  # the negative half of the grid stays empty
    assert lesson.codes_used["asymmetric"] > lesson.codes_used["symmetric"]
    assert "asymmetric int4 has" in lesson.takeaway
    sweep = lesson.bits_sweep["asymmetric"]
    assert all(later < earlier for earlier, later in zip(sweep, sweep[1:], strict=False))


def test_symmetric_is_as_good_on_two_sided_data():
    lesson = lessons.symmetry_lesson("gaussian", bits=8)
    assert 0.9 < lesson.mse["symmetric"] / lesson.mse["asymmetric"] < 1.1
    assert "within 10%" in lesson.takeaway


def test_groups_beat_one_scale_when_there_are_outliers():
    lesson = lessons.granularity_lesson(bits=4, outliers=4, outlier_scale=20.0)
    by_label = {row.scheme.label: row for row in lesson.rows}
    assert by_label["int4 g64"].sqnr_db > by_label["int4 tensor"].sqnr_db + 10
    assert by_label["int4 g64"].bits_per_weight == pytest.approx(4.25)
    assert by_label["int4 channel"].bits_per_weight == pytest.approx(4 + 16 / 1024)
    assert by_label["int4 g16"].scales == 256 * 1024 // 16
    bits = [row.bits_per_weight for row in lesson.rows]
    assert bits == sorted(bits)
    assert "+" in lesson.takeaway and "0.250 extra bits" in lesson.takeaway


def test_without_outliers_the_gain_is_smaller():
    clean = lessons.granularity_lesson(bits=4, outliers=0)
    dirty = lessons.granularity_lesson(bits=4, outliers=4)
    clean_gain, dirty_gain = (lesson.rows[4].sqnr_db - lesson.rows[0].sqnr_db for lesson in (clean, dirty))
    assert 0 < clean_gain < dirty_gain
    assert "outlier" not in clean.takeaway


@pytest.fixture(scope="module")
def synthetic_calibration():
    batches = lessons.synthetic_activations()
    return lessons.calibration_lesson(batches[:4], batches[4:], bits=4)


def test_clipping_observers_beat_min_max_on_heavy_tails(synthetic_calibration):
    lesson = synthetic_calibration
    min_max = lesson.row("min-max").mse
    assert lesson.row("percentile 99.99%").mse < min_max / 1.5
    assert lesson.row("MSE-optimal clip").mse < min_max / 1.5
    assert lesson.row("percentile 99.99%").clip < lesson.row("min-max").clip
    assert lesson.row("dynamic per-token").mse < lesson.row("dynamic per-tensor").mse
    assert lesson.row("min-max").clipped_fraction < lesson.row("percentile 99.9%").clipped_fraction
    assert "lower MSE than min-max" in lesson.takeaway


def test_calibration_needs_data():
    with pytest.raises(ValueError, match="at least one calibration"):
        lessons.calibration_lesson([], [torch.ones(2, 4)])


def test_capture_inputs_of_a_down_projection_and_unhook():
    model, tokenizer = build_tiny_llama(), build_char_tokenizer()
    names = lessons.mlp_output_projections(model)
    assert names == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    texts = ("hello world", "abc")
    captured = lessons.capture_inputs(model, tokenizer, texts, names[1])
    assert [tuple(c.shape) for c in captured] == [(11, 128), (3, 128)]  # (tokens, intermediate_size)
    module = model.get_submodule(names[1])
    assert not module._forward_pre_hooks

    def explode(*_):
        raise RuntimeError("boom")

    handle = model.lm_head.register_forward_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        lessons.capture_inputs(model, tokenizer, texts, names[1])
    handle.remove()
    assert not module._forward_pre_hooks, "the hook must be removed even when the forward fails"


def test_model_without_mlp_projection_is_a_clear_error():
    with pytest.raises(ValueError, match="no MLP output projection"):
        lessons.mlp_output_projections(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_arithmetic_intensity_numbers():
    int4 = lessons.WEIGHT_FORMATS["int4 weights (g128)"]
    matvec = lessons.layer_cost(4096, 4096, 1, None)
    assert matvec.flops == 2 * 4096 * 4096
    assert matvec.bytes == 2 * 4096 * 4096 + 2 * (4096 + 4096)
    assert matvec.intensity == pytest.approx(1.0, abs=1e-3)  # 2 FLOPs per 2-byte weight
    assert lessons.layer_cost(4096, 4096, 1, int4).intensity == pytest.approx(2 / (4.125 / 8), rel=1e-2)
    assert lessons.layer_cost(4096, 4096, 4096, None).intensity == pytest.approx(
        4096 / 3
    )  # W, X, Y of equal size
    assert lessons.ACCELERATORS["NVIDIA H100 SXM"].ridge == pytest.approx(295, rel=0.01)


def test_decode_is_memory_bound_and_prefill_compute_bound():
    lesson = lessons.speed_lesson("NVIDIA H100 SXM", 14336, 4096, 4096)
    h100 = lesson.device
    one, many = lesson.costs["fp16"]
    assert lessons.layer_time(one, h100).bound == "memory"
    assert lessons.layer_time(many, h100).bound == "compute"
    speedup = {
        label: [b / t for b, t in zip(lesson.times["fp16"], times, strict=True)]
        for label, times in lesson.times.items()
    }
    assert speedup["int4 weights (g128)"][0] > 3.5  # ~16 / 4.125 bits at one token
    assert 1.8 < speedup["int8 weights (per channel)"][0] < 2.0
    assert speedup["int4 weights (g128)"][-1] < 1.0  # 8,192 tokens: dequantization makes it slower
    assert "memory-bound" in lesson.takeaway and "slower" in lesson.takeaway
    with pytest.raises(ValueError, match="unknown accelerator"):
        lessons.speed_lesson("TPU", 1, 1, 1)
    assert not math.isnan(lesson.costs["int4 weights (g128)"][1].intensity)
