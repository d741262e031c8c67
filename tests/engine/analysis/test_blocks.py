"""The grid page's engine: block pictures, levels, clipping, the staircase and the scheme table."""

from __future__ import annotations

import math

import pytest
import torch

from engine.analysis.blocks import block_count, block_picture, mapping_curve, scheme_table, standard_schemes
from engine.analysis.tensors import get_weight, synthetic_tensor, weight_tensors
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
