"""The grid page's engine: block pictures, levels, clipping, the staircase and the scheme table."""

from __future__ import annotations

import math

import pytest
import torch

from engine.analysis.blocks import (
    block_count,
    block_picture,
    gguf_view,
    mapping_curve,
    microscaling_view,
    scheme_table,
    standard_schemes,
)
from engine.analysis.tensors import get_weight, synthetic_tensor, weight_tensors
from engine.quant import gguf
from engine.quant.gguf import Q4_0, Q4_K, Q6_K
from engine.quant.schemes import QuantScheme
from tests.conftest import build_tiny_llama


def test_block_count_per_granularity():
    shape = (8, 128)
    assert block_count(shape, QuantScheme(4, "int", True, "tensor")) == (1, 1)
    assert block_count(shape, QuantScheme(4, "int", True, "channel")) == (8, 1)
    assert block_count(shape, QuantScheme(4, "int", True, "group", 32)) == (8, 4)
    with pytest.raises(ValueError, match="group size 48 does not divide the rows of 128 values"):
        block_count(shape, QuantScheme(4, "int", True, "group", 48))


def test_int4_block_has_16_levels_and_symmetric_top_level_hits_absmax():
    x = synthetic_tensor(rows=4, cols=64, outliers=0)
    scheme = QuantScheme(4, "int", True, "group", 32)
    picture = block_picture(x, scheme, row=2, block=1)
    assert picture.levels.numel() == 16
    block = x[2, 32:64]
    assert picture.values.equal(block)
    assert math.isclose(float(picture.levels[-1]), float(block.abs().max()), rel_tol=1e-3)
    assert "row 2, group 1 of 2" in picture.description
    assert not picture.clipped.any()


def test_clip_ratio_clips_the_outlier():
    x = synthetic_tensor(rows=1, cols=64, outliers=1, outlier_scale=30.0)
    picture = block_picture(x, QuantScheme(4, "int", True, "channel", clip_ratio=0.5), row=0)
    assert int(picture.clipped.sum()) >= 1
    assert float(picture.values[picture.clipped].abs().max()) == pytest.approx(30.0)


def test_nf4_and_fp8_levels():
    x = synthetic_tensor(rows=2, cols=64, outliers=0)
    nf4 = block_picture(x, QuantScheme(4, "nf4", True, "group", 64, scale_dtype="float32"))
    assert nf4.levels.numel() == 16
    fp8 = block_picture(x, QuantScheme(8, "fp8_e4m3", True, "tensor", scale_dtype="float32"))
    assert fp8.levels.numel() > 200  # 253 distinct finite e4m3 values


def test_huge_tensor_block_is_sampled_but_keeps_the_extreme():
    x = synthetic_tensor(rows=256, cols=512, outliers=1, outlier_scale=50.0)
    picture = block_picture(x, QuantScheme(8, "int", True, "tensor"))
    assert picture.values.numel() <= 4097
    assert float(picture.values.abs().max()) == pytest.approx(50.0)
    assert picture.block_elements == x.numel()


def test_mapping_curve_is_a_staircase_of_the_levels():
    x = synthetic_tensor(rows=1, cols=128, outliers=0)
    scheme = QuantScheme(3, "int", False, "channel")
    picture = block_picture(x, scheme)
    xs, qs = mapping_curve(picture, scheme)
    assert torch.all(qs[1:] >= qs[:-1])  # monotone
    steps = torch.unique(qs)
    assert steps.numel() == 8
    assert torch.allclose(steps, picture.levels, atol=1e-5)


def test_one_outlier_stretches_a_per_tensor_scale():
    """The teaching point of the synthetic toggle: per-tensor int4 collapses, per-group survives."""
    clean = synthetic_tensor(rows=64, cols=512, outliers=0)
    spiked = synthetic_tensor(rows=64, cols=512, outliers=1, outlier_scale=50.0)
    schemes = [QuantScheme(4, "int", True, "tensor"), QuantScheme(4, "int", True, "group", 64)]
    clean_rows, spiked_rows = scheme_table(clean, schemes), scheme_table(spiked, schemes)
    assert spiked_rows[0]["sqnr_db"] < clean_rows[0]["sqnr_db"] - 10
    assert spiked_rows[1]["sqnr_db"] > clean_rows[1]["sqnr_db"] - 1


def test_scheme_table_reports_what_does_not_fit():
    x = synthetic_tensor(rows=4, cols=96, outliers=0)
    rows = {row["scheme"]: row for row in scheme_table(x, standard_schemes())}
    assert math.isnan(rows["int4 g64"]["sqnr_db"]) and "does not divide" in rows["int4 g64"]["note"]
    assert rows["int8 channel"]["sqnr_db"] > 35
    assert rows["int8 channel"]["sqnr_db"] > rows["int4 channel"]["sqnr_db"] > rows["int2 channel"]["sqnr_db"]
    assert rows["int4 g32"]["bits/weight"] == pytest.approx(4.5)


def test_standard_schemes_are_distinct():
    labels = [scheme.label for scheme in standard_schemes()]
    assert len(labels) == len(set(labels)) and len(labels) >= 40


def test_weight_tensors_of_tiny_llama():
    model = build_tiny_llama()
    infos = weight_tensors(model)
    names = [info.name for info in infos]
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight"
    assert sum(info.layer == 1 for info in infos) == 7  # q k v o gate up down
    weight = get_weight(model, "model.layers.1.mlp.down_proj.weight")
    assert weight.shape == (64, 128) and weight.dtype == torch.float32
    with pytest.raises(ValueError, match="no weight called"):
        get_weight(model, "model.layers.9.nope.weight")


def test_tied_weights_listed_once():
    model = build_tiny_llama(tie_word_embeddings=True)
    assert [info.module for info in weight_tensors(model)].count("lm_head") == 0


@pytest.mark.parametrize("kind", ["gaussian", "laplace"])
def test_synthetic_tensor_statistics(kind):
    x = synthetic_tensor(kind, rows=256, cols=256, outliers=3, outlier_scale=40.0, seed=1)
    assert (x.abs() == 40.0).sum() == 3
    body = x[x.abs() < 40]
    assert 0.9 < float(body.std()) < 1.1
    assert synthetic_tensor(kind, seed=1).equal(synthetic_tensor(kind, seed=1))
    with pytest.raises(ValueError, match="Unknown synthetic"):
        synthetic_tensor("uniform")


def test_scheme_table_ranks_the_microscaling_formats():
    x = synthetic_tensor(rows=8, cols=256, outliers=1, outlier_scale=20.0)
    rows = {row["scheme"]: row for row in scheme_table(x, standard_schemes())}
    for label, bpw in (("mxfp4", 4.25), ("mxfp6_e2m3", 6.25), ("mxfp8_e4m3", 8.25)):
        assert rows[label]["bits/weight"] == bpw and rows[label]["note"] == ""
    assert rows["nvfp4"]["bits/weight"] == 4.5 + 32 / x.numel()  # the float32 tensor scale counts
    # NVFP4's finer E4M3 scale and smaller blocks beat MXFP4's power-of-two scale on the same tensor
    assert rows["nvfp4"]["sqnr_db"] > rows["mxfp4"]["sqnr_db"]
    assert rows["mxfp8_e4m3"]["sqnr_db"] > rows["mxfp6_e2m3"]["sqnr_db"] > rows["mxfp4"]["sqnr_db"]


@pytest.mark.parametrize("label", ["mxfp4", "nvfp4"])
def test_microscaling_block_picture_uses_the_block_scale_it_stored(label):
    x = synthetic_tensor(rows=4, cols=64, outliers=1, outlier_scale=20.0)
    scheme = QuantScheme.from_label(label)
    picture = block_picture(x, scheme, row=1, block=1)
    assert picture.levels.numel() == 15  # E2M1: +-{0.5, 1, 1.5, 2, 3, 4, 6} and 0
    assert torch.all(torch.isin(picture.dequantized, picture.levels))
    xs, qs = mapping_curve(picture, scheme)
    assert torch.equal(torch.unique(qs), picture.levels)
    if label == "mxfp4":  # a power of two
        assert math.log2(picture.scale) == int(math.log2(picture.scale))


# -- GGUF block types and the microscaling second level ------------------------------------------------


def test_gguf_block_count_is_in_scale_blocks():
    assert block_count((8, 512), Q4_0) == (8, 16)
    assert block_count((8, 512), Q4_K) == (8, 16)  # sub-blocks of 32
    assert block_count((8, 512), Q6_K) == (8, 32)  # sub-blocks of 16
    with pytest.raises(ValueError, match="super-blocks of 256 values; this row has 576"):
        block_count((8, 576), Q4_K)


@pytest.mark.parametrize("t", [Q4_0, Q4_K, Q6_K], ids=lambda t: t.name)
def test_gguf_block_picture_levels_come_from_the_packed_bytes(t):
    x = synthetic_tensor(rows=4, cols=512, outliers=1, outlier_scale=20.0)
    view = gguf_view(x, t, row=2, block=9)
    picture, size = view.picture, view.packed.sub_size
    first = 9 * size
    assert picture.values.equal(x[2, first : first + size]) and picture.block_elements == size
    assert torch.equal(picture.dequantized, gguf.fake_quantize(x, t)[2, first : first + size])
    assert torch.isin(picture.dequantized, picture.levels).all()
    xs, qs = mapping_curve(picture, t)
    assert torch.isin(torch.unique(qs), picture.levels).all() and torch.all(qs[1:] >= qs[:-1])
    assert block_picture(x, t, 2, 9).levels.equal(picture.levels)
    if t.is_k_quant:
        assert "sub-block" in picture.description and view.sub == 9 % (256 // size)


def test_scheme_table_ranks_gguf_types_with_the_microscaling_formats():
    x = synthetic_tensor(rows=8, cols=512, outliers=1, outlier_scale=20.0)
    rows = {row["scheme"]: row for row in scheme_table(x, standard_schemes())}
    for label in ("mxfp4", "nvfp4", "int4 g32", "Q4_0", "Q8_0", "Q4_K", "Q6_K", "mxfp8_e4m3"):
        assert rows[label]["note"] == "" and rows[label]["sqnr_db"] > 0
    assert rows["Q4_K"]["bits/weight"] == 4.5 and rows["Q6_K"]["bits/weight"] == 6.5625
    assert (
        rows["Q6_K"]["sqnr_db"] > rows["Q4_K"]["sqnr_db"] > rows["Q3_K"]["sqnr_db"] > rows["Q2_K"]["sqnr_db"]
    )
    assert rows["Q4_K"]["format"] == "GGUF k-quant" and rows["Q4_0"]["format"] == "GGUF legacy"


def test_gguf_types_that_do_not_fit_the_row_name_llama_cpp_fallback():
    rows = {
        row["scheme"]: row for row in scheme_table(synthetic_tensor(rows=4, cols=576), standard_schemes())
    }
    assert math.isnan(rows["Q4_K"]["sqnr_db"])
    assert "this row has 576" in rows["Q4_K"]["note"] and "as Q5_0 instead" in rows["Q4_K"]["note"]
    assert rows["Q4_0"]["note"] == ""


def test_mxfp4_scales_are_powers_of_two_and_the_top_of_a_block_saturates():
    x = synthetic_tensor(rows=4, cols=64, outliers=0) * 0.1
    x[1, 40] = 7.0  # block (1, 1): absmax 7 -> scale 2**(2 - 2) = 1, and 7 > 6 * 1 saturates
    view = microscaling_view(x, QuantScheme.from_label("mxfp4"), row=1, block=1)
    census = view.tensor_scales
    assert int(census.counts.sum()) == 8 and int(view.row_scales.counts.sum()) == 2
    assert census.steps_per_doubling == 1 and census.tensor_scale is None
    assert torch.equal(torch.log2(census.grid), torch.log2(census.grid).round())  # every stop a power of two
    assert torch.isin(census.scales, census.grid).all()
    assert view.picked_scale == 1.0 and view.block_saturated == 1 and view.block_values == 32
    assert view.saturated >= 1 and view.values == x.numel()
    assert view.packed is not None and view.packed.raw[0] == 127  # E8M0 byte of 2**0
    rceil = microscaling_view(x, QuantScheme.from_label("mxfp4 rceil"), row=1, block=1)
    assert rceil.saturated == 0 and rceil.picked_scale == 2.0


def test_nvfp4_scales_sit_on_the_e4m3_grid_times_the_tensor_scale():
    x = synthetic_tensor(rows=4, cols=64, outliers=1, outlier_scale=20.0)
    view = microscaling_view(x, QuantScheme.from_label("nvfp4"), row=0, block=2)
    census = view.tensor_scales
    assert census.steps_per_doubling == 8 and census.tensor_scale > 0
    assert torch.isin(census.scales, census.grid).all() and int(census.counts.sum()) == 16
    assert census.grid.numel() > census.scales.numel()
    with pytest.raises(ValueError, match="no microscaling block scales"):
        microscaling_view(x, QuantScheme(4, "int", True, "group", 32))
