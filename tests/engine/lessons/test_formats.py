"""The "Today's formats" lesson on a real weight of the default model: each section shows the direction it
claims, with its numbers; the scale bookkeeping is checked on hand-made blocks."""

from __future__ import annotations

import pytest
import torch

from engine import lessons
from engine.analysis.tensors import get_weight
from engine.lessons import formats

WEIGHT = "model.layers.3.mlp.down_proj.weight"  # 576 rows of 1536 values: 6 super-blocks of 256 per row


@pytest.fixture(scope="module")
def weight(default_loaded):
    return get_weight(default_loaded.model, WEIGHT)


@pytest.fixture(scope="module")
def lesson(weight):
    return lessons.formats_lesson(weight, WEIGHT)


def test_block_scales_keep_the_outlier_in_its_block(lesson):
    row = lesson.outlier
    assert row.values.abs().argmax() == row.column
    assert row.block_error["int4 g32"].numel() == lesson.shape[1] // 32
    channel, g32, g16 = (row.others(label) for label in formats.OUTLIER_SCHEMES)
    assert g16 < g32 < channel / 4
    assert f"{channel / g32:.1f}× lower with groups of 32" in row.takeaway


def test_e2m1_is_finer_near_zero_and_coarser_at_the_top(lesson):
    element = lesson.element
    assert element.levels["E2M1"].abs().unique().tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert torch.allclose(element.levels["int4"].diff(), torch.full((14,), 6 / 7))
    assert element.step("E2M1", "zero") == 0.5 and element.step("E2M1", "top") == 2
    assert element.mse_inner["E2M1"] < element.mse_inner["int4"]
    assert element.mse_outer["E2M1"] > element.mse_outer["int4"]
    assert element.values.abs().max() <= 6 + 1e-5
    assert element.takeaway.startswith(f"{element.inner_share:.0%} of this weight's values")


def test_nvfp4_beats_mxfp4_and_e8m0_scales_are_powers_of_two(lesson):
    mx, nv, g32 = (lesson.scales.row(label) for label in ("mxfp4", "nvfp4", "int4 g32"))
    assert nv.mse < mx.mse and nv.sqnr_db > mx.sqnr_db
    assert mx.bits_per_weight == pytest.approx(4.25) and g32.bits_per_weight == pytest.approx(4.5)
    exponents = torch.log2(mx.scales)
    assert torch.equal(exponents, exponents.round())  # E8M0: a bare power of two per block
    assert not torch.equal(torch.log2(nv.scales), torch.log2(nv.scales).round())
    assert mx.ratios.min() >= 4 and mx.ratios.max() < 8  # floor rule: the max lands in [4, 8)
    assert (nv.ratios - 6).abs().max() < 6 / 16  # E4M3's 3 mantissa bits: within 1/16 of 6
    assert set(mx.landed) == {4.0, 6.0} and set(nv.landed) == {6.0} and set(g32.landed) == {7.0}
    assert mx.saturated > 0.2 and mx.wasted > 0.1 and nv.wasted == 0
    assert mx.worst_clip > 0.2 > 0.1 > nv.worst_clip
    assert f"{mx.mse / nv.mse:.2f}× lower than MXFP4's" in lesson.scales.takeaway


def test_saturation_shares_on_hand_made_blocks():
    x = torch.full((1, 64), 0.5)
    x[0, 0] = 7.0  # block 1: absmax 7, scale 2**(2 - 2) = 1, so the max sits at 7 and is clipped to 6
    x[0, 32] = -4.5  # block 2: absmax 4.5, scale 1, the max rounds to 4 and the code for 6 goes unused
    mx = formats.scale_lesson(x).row("mxfp4")
    assert mx.scales.tolist() == [1.0, 1.0]
    assert mx.ratios.tolist() == [7.0, 4.5]
    assert mx.landed == {4.0: 0.5, 6.0: 0.5}
    assert mx.saturated == 0.5 and mx.wasted == 0.5
    assert mx.worst_clip == pytest.approx(1 / 7)
    nv = formats.scale_lesson(x).row("nvfp4")
    assert nv.landed == {6.0: 1.0} and nv.wasted == 0


def test_q4_k_beats_q4_0_at_the_same_size(lesson):
    kquant = lesson.kquant
    assert kquant.bits == {"Q4_0": 4.5, "Q4_K": 4.5}
    assert kquant.real["Q4_K"] > kquant.real["Q4_0"] + 3
    assert kquant.fresh["Q4_K"] > kquant.fresh["Q4_0"]
    assert kquant.real_mse["Q4_K"] < kquant.real_mse["Q4_0"]
    assert kquant.prior_grid  # the default model was shipped on a 4-bit grid, and the lesson says so
    assert "already stored on a 4-bit grid" in kquant.takeaway
    layouts = lessons.super_block_layouts()
    assert {name: sum(bits for _, bits in parts) for name, parts in layouts.items()} == {
        "Q4_K": 1152,
        "Q4_0": 1152,
    }


def test_formats_table_bits_and_native_support():
    rows = {row.name: row for row in lessons.formats_table()}
    assert {name: row.bits_per_weight for name, row in rows.items()} == {
        "int4 g32": 4.5,
        "MXFP4": 4.25,
        "NVFP4": 4.5,
        "Q4_0": 4.5,
        "Q4_K": 4.5,
        "MXFP8": 8.25,
        "Q8_0": 8.5,
    }
    assert rows["NVFP4"].per_tensor_bits == 32 and rows["MXFP4"].per_tensor_bits == 0
    assert rows["MXFP4"].native_on == rows["NVFP4"].native_on == ("Blackwell",)
    assert rows["Q4_K"].native_on == rows["int4 g32"].native_on == ()
    assert "weight-only" in rows["Q4_K"].elsewhere and rows["MXFP4"].elsewhere == "emulated"
    assert "only MXFP4 and NVFP4 run natively, on Blackwell" in formats.table_takeaway(list(rows.values()))


def test_rows_that_do_not_split_into_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        lessons.formats_lesson(torch.randn(4, 48))
    small = lessons.formats_lesson(torch.randn(8, 96, generator=torch.Generator().manual_seed(0)))
    assert small.kquant is None and "super-blocks of 256" in small.kquant_refusal
    assert small.scales.row("nvfp4").mse < small.scales.row("mxfp4").mse
