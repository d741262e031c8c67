"""QuantScheme: validation messages, labels, hashability and storage cost."""

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.quant.schemes import (
    QuantScheme,
    bits_per_weight,
    check_shape,
    parse_label,
    storage_bits,
)
from engine.quant.shapes import suggest_group_sizes

pytestmark = pytest.mark.usefixtures("single_thread")


def scheme_strategy() -> st.SearchStrategy[QuantScheme]:
    """Every valid scheme shape: format x bits x symmetry x granularity x options."""

    @st.composite
    def build(draw):
        fmt = draw(st.sampled_from(["int", "nf4", "fp4", "fp8_e4m3", "fp8_e5m2"]))
        bits = {"nf4": 4, "fp4": 4, "fp8_e4m3": 8, "fp8_e5m2": 8}.get(fmt) or draw(st.integers(2, 8))
        symmetric = True if fmt != "int" else draw(st.booleans())
        granularity = draw(st.sampled_from(["tensor", "channel", "group", "block"]))
        sized = granularity in ("group", "block")
        group_size = draw(st.sampled_from([16, 32, 64, 128])) if sized else None
        clip = draw(st.sampled_from([1.0, 0.9, 0.75, 0.123456789, 1e-5]))
        scale_dtype = draw(st.sampled_from(["float16", "bfloat16", "float32"]))
        double_quant = granularity in ("channel", "group") and draw(st.booleans())
        return QuantScheme(bits, fmt, symmetric, granularity, group_size, clip, scale_dtype, double_quant)

    return build()


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bits": 9}, "bits must be a whole number from 2 to 8"),
        ({"bits": 1}, "bits must be a whole number from 2 to 8"),
        ({"bits": 4.0}, "bits must be a whole number"),
        ({"bits": True}, "bits must be a whole number"),
        ({"format": "int3"}, "unknown format 'int3'; choose one of int, nf4"),
        ({"format": "nf4", "bits": 3}, "nf4 is a 16-value (4-bit) codebook, so it takes 4 bits"),
        ({"format": "fp4", "bits": 8}, "so it takes 4 bits"),
        ({"format": "fp8_e4m3", "bits": 4}, "fp8_e4m3 is an 8-bit float, so it takes 8 bits"),
        ({"format": "nf4", "bits": 4, "symmetric": False}, "pick a symmetric range, or the int format"),
        ({"granularity": "row"}, "unknown granularity 'row'; choose one of tensor, channel, group"),
        ({"granularity": "group"}, "per-group scales need a group size"),
        ({"granularity": "group", "group_size": 0}, "the group size must be a positive whole number"),
        ({"granularity": "group", "group_size": -32}, "the group size must be a positive whole number"),
        ({"group_size": 128}, "a group size (128) only applies to per-group scales"),
        ({"clip_ratio": 0.0}, "the clip ratio must be above 0 and at most 1"),
        ({"clip_ratio": 1.5}, "the clip ratio must be above 0 and at most 1"),
        ({"clip_ratio": float("nan")}, "the clip ratio must be above 0 and at most 1"),
        ({"scale_dtype": "int8"}, "the scale dtype must be one of float16, bfloat16, float32"),
        ({"granularity": "tensor", "double_quant": True}, "a per-tensor scheme has a single one"),
        ({"symmetric": "yes"}, "the range must be symmetric or asymmetric"),
    ],
)
def test_invalid_schemes_name_the_fix(kwargs, message):
    with pytest.raises(ValueError) as err:
        QuantScheme(**kwargs)
    assert message in str(err.value)


def test_group_size_not_dividing_lists_divisors():
    scheme = QuantScheme(bits=4, granularity="group", group_size=100)
    with pytest.raises(ValueError) as err:
        check_shape(scheme, (1536, 576))
    assert (
        str(err.value)
        == "group size 100 does not divide the rows of 576 values; pick a group size of 16, 32, 48, 64, 96 or 192"
    )


def test_suggested_group_sizes_fall_back_when_no_multiple_of_32_divides():
    assert suggest_group_sizes(576) == [32, 64, 96, 192, 288, 576]
    assert suggest_group_sizes(100) == [10, 20, 25, 50, 100]
    assert suggest_group_sizes(6) == [1, 2, 3, 6]


def test_defaults_and_normalisation():
    scheme = QuantScheme()
    assert (scheme.bits, scheme.format, scheme.symmetric, scheme.granularity) == (8, "int", True, "channel")
    assert QuantScheme(scale_dtype=torch.float32).scale_dtype == "float32"
    assert QuantScheme(scale_dtype="bf16").scale_dtype == "bfloat16"
    assert QuantScheme(clip_ratio=1).clip_ratio == 1.0 and isinstance(
        QuantScheme(clip_ratio=1).clip_ratio, float
    )
    widget_value = QuantScheme(bits=np.int64(4), granularity="group", group_size=np.int64(64))
    assert widget_value == QuantScheme(bits=4, granularity="group", group_size=64)
    assert type(widget_value.bits) is int


def test_hashable_frozen_and_usable_as_cache_key():
    a = QuantScheme(4, "int", False, "group", 128)
    b = QuantScheme.from_label("int4 asym g128")
    assert a == b and hash(a) == hash(b)
    assert {a: "cached"}[b] == "cached"
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.bits = 8  # type: ignore[misc]
    assert dataclasses.replace(a, bits=3).bits == 3
    with pytest.raises(ValueError):
        dataclasses.replace(a, format="nf4")  # replace re-validates


# -- labels ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "label"),
    [
        (QuantScheme(4, "int", False, "group", 128), "int4 asym g128"),
        (QuantScheme(4, "nf4", granularity="group", group_size=64), "nf4 g64"),
        (QuantScheme(8, "fp8_e4m3", granularity="channel"), "fp8_e4m3 channel"),
        (QuantScheme(8), "int8 channel"),
        (
            QuantScheme(
                4, "nf4", granularity="group", group_size=64, scale_dtype="float32", double_quant=True
            ),
            "nf4 g64 scale_fp32 dq",
        ),
        (QuantScheme(8, granularity="tensor", clip_ratio=0.9), "int8 tensor clip0.9"),
        (QuantScheme(3, granularity="group", group_size=32, clip_ratio=1e-5), "int3 g32 clip0.00001"),
    ],
)
def test_label(scheme, label):
    assert scheme.label == label == str(scheme)
    assert QuantScheme.from_label(label) == scheme


def test_from_label_accepts_hyphens_any_order_and_case():
    expected = QuantScheme(4, "int", False, "group", 128)
    for text in ("int4-asym-g128", "g128 asym int4", "INT4, asym, G128", "  int4  asym\tg128 "):
        assert QuantScheme.from_label(text) == expected
    assert parse_label("int8 sym tensor") == QuantScheme(8, granularity="tensor")
    assert parse_label("int8") == QuantScheme(8)  # granularity defaults to channel


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("int4 g128 foo", "cannot read 'foo'"),
        ("g128", "names no format"),
        ("", "empty scheme label"),
        ("int4 nf4", "sets the format twice"),
        ("int4 g64 channel", "sets the granularity twice"),
        ("int9 channel", "bits must be a whole number from 2 to 8"),
        ("nf4 asym g64", "pick a symmetric range"),
        ("int4 g128 scale_int8", "the scale dtype must be one of"),
    ],
)
def test_from_label_errors(label, message):
    with pytest.raises(ValueError) as err:
        QuantScheme.from_label(label)
    assert message in str(err.value)


@settings(max_examples=200, deadline=None)
@given(scheme_strategy())
def test_label_round_trip(scheme):
    assert QuantScheme.from_label(scheme.label) == scheme
    assert QuantScheme.from_label(scheme.label.replace(" ", "-")) == scheme


def test_labels_are_unique_over_a_grid_of_schemes():
    schemes = set()
    for bits, sym, gran in itertools.product(range(2, 9), (True, False), ("tensor", "channel", 32, 128)):
        group = gran if isinstance(gran, int) else None
        schemes.add(QuantScheme(bits, "int", sym, "group" if group else gran, group))
    assert len({s.label for s in schemes}) == len(schemes)


# -- storage cost ----------------------------------------------------------------------------------


def test_bits_per_weight_reference_figures():
    int4_g128 = QuantScheme(4, granularity="group", group_size=128)
    assert bits_per_weight(int4_g128) == 4.125
    assert bits_per_weight(QuantScheme.from_label("int4 asym g128")) == 4.25  # fp16 scale + fp16 zero
    nf4 = QuantScheme(4, "nf4", granularity="group", group_size=64, scale_dtype="float32")
    assert bits_per_weight(nf4) == 4.5
    nf4_dq = dataclasses.replace(nf4, double_quant=True)
    assert bits_per_weight(nf4_dq) == pytest.approx(4 + 8 / 64 + 32 / (64 * 256))
    assert round(bits_per_weight(nf4_dq), 3) == 4.127
    assert bits_per_weight(QuantScheme(8, "fp8_e4m3", granularity="channel"), in_features=576) == 8 + 16 / 576
    assert bits_per_weight(QuantScheme(8, granularity="tensor")) == 8.0


def test_bits_per_weight_needs_in_features_for_channel_and_checks_groups():
    with pytest.raises(ValueError, match="pass in_features"):
        bits_per_weight(QuantScheme(8, granularity="channel"))
    with pytest.raises(ValueError, match="does not divide the rows of 576 values"):
        bits_per_weight(QuantScheme(4, granularity="group", group_size=128), in_features=576)


@settings(max_examples=100, deadline=None)
@given(scheme_strategy(), st.sampled_from([128, 576, 1536]), st.sampled_from([1, 192, 1536]))
def test_exact_bits_per_weight_matches_storage_bits(scheme, in_features, out_features):
    if scheme.granularity == "group" and in_features % scheme.group_size:
        return
    exact = bits_per_weight(scheme, in_features, out_features)
    assert exact == storage_bits(scheme, (out_features, in_features)) / (in_features * out_features)
    whole_tiles = scheme.granularity != "block" or out_features % scheme.group_size == 0
    if scheme.granularity != "tensor" and not scheme.double_quant and whole_tiles:  # the limit is exact
        assert exact == pytest.approx(bits_per_weight(scheme, in_features), abs=1e-12)
    assert exact >= scheme.bits
