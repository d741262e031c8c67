"""quantize / dequantize / fake_quantize over every format x granularity; packing; storage; static qparams."""

import dataclasses
import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.quant import formats
from engine.quant.metrics import mse, sqnr_db
from engine.quant.primitives import (
    QTensor,
    choose_qparams,
    dequantize,
    double_quantize_scales,
    expected_nbytes,
    fake_quantize,
    pack_int4,
    qparams_from_range,
    quantize,
    scale_shape,
    unpack_int4,
)
from engine.quant.schemes import QuantScheme, bits_per_weight

pytestmark = pytest.mark.usefixtures("single_thread")

FORMATS = [
    ("int", 8, True),
    ("int", 8, False),
    ("int", 4, True),
    ("int", 4, False),
    ("int", 3, True),
    ("int", 2, False),
    ("nf4", 4, True),
    ("fp4", 4, True),
    ("fp8_e4m3", 8, True),
    ("fp8_e5m2", 8, True),
]
GRANULARITIES = [("tensor", None), ("channel", None), ("group", 32), ("group", 64)]
ALL_SCHEMES = [
    QuantScheme(bits, fmt, sym, gran, group)
    for (fmt, bits, sym), (gran, group) in itertools.product(FORMATS, GRANULARITIES)
]


@pytest.fixture(scope="module")
def gaussian() -> torch.Tensor:
    return torch.randn(1024, 1024, generator=torch.Generator().manual_seed(0))


def _weight(rows=48, cols=256, seed=0, dtype=torch.float32):
    return (torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05).to(dtype)


@pytest.mark.parametrize("scheme", ALL_SCHEMES, ids=lambda s: s.label)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_shapes_dtypes_and_fake_equals_dequantize(scheme, dtype):
    x = _weight(dtype=dtype)
    qt = quantize(x, scheme)
    assert isinstance(qt, QTensor)
    assert qt.codes.shape == x.shape and qt.codes.dtype == formats.code_dtype(scheme)
    assert qt.shape == x.shape and qt.dtype == dtype and qt.scheme is scheme
    assert qt.scale.shape == scale_shape(scheme, x.shape)
    assert (qt.zero_point is not None) == scheme.has_zero_point
    y = qt.dequantize()
    assert y.shape == x.shape and y.dtype == dtype
    fake = fake_quantize(x, scheme)
    assert fake.shape == x.shape and fake.dtype == dtype
    assert torch.equal(fake, y)
    assert torch.isfinite(y.float()).all()
    assert sqnr_db(x, y) > 1  # sanity only (int2 per tensor is ~2 dB); floors are tested below


def test_scale_shapes_per_granularity():
    x = _weight(6, 128)
    assert quantize(x, QuantScheme(8, granularity="tensor")).scale.shape == (1, 1)
    assert quantize(x, QuantScheme(8, granularity="channel")).scale.shape == (6, 1)
    assert quantize(x, QuantScheme(4, granularity="group", group_size=32)).scale.shape == (6, 4)
    activations = torch.randn(2, 5, 64)  # (batch, tokens, channels): channel = per token
    qt = quantize(activations, QuantScheme(8, granularity="channel"))
    assert qt.scale.shape == (2, 5, 1)
    assert torch.equal(qt.codes.abs().amax(dim=-1), torch.full((2, 5), 127, dtype=torch.int8))
    vector = torch.randn(96)
    assert quantize(vector, QuantScheme(4, granularity="group", group_size=32)).scale.shape == (3,)


@pytest.mark.parametrize(
    ("label", "floor_db"),
    [
        ("int8 channel", 41.0),
        ("int8 asym channel", 41.5),
        ("int8 tensor", 38.5),
        ("int4 g128", 18.0),
        ("int4 asym g128", 19.5),
        ("int4 g64", 19.0),
        ("nf4 g64", 20.3),
        ("fp4 g64", 17.8),
        ("fp8_e4m3 channel", 31.0),
        ("fp8_e5m2 channel", 25.0),
        ("int3 asym g64", 13.8),
        ("int2 asym g32", 7.3),
        ("int6 g64", 31.8),
    ],
)
def test_error_floors_on_gaussian_weights(gaussian, label, floor_db):
    assert sqnr_db(gaussian, fake_quantize(gaussian, QuantScheme.from_label(label))) > floor_db


def test_more_bits_and_smaller_groups_mean_less_error(gaussian):
    by_bits = [
        sqnr_db(gaussian, fake_quantize(gaussian, QuantScheme(b, granularity="group", group_size=64)))
        for b in range(2, 9)
    ]
    assert by_bits == sorted(by_bits) and by_bits[-1] - by_bits[-2] > 5  # ~6 dB per bit
    by_group = [
        sqnr_db(gaussian, fake_quantize(gaussian, QuantScheme.from_label(f"int4 {g}")))
        for g in ("tensor", "channel", "g256", "g64", "g32")
    ]
    assert by_group == sorted(by_group)


def test_nf4_beats_int4_absmax_on_gaussian_at_equal_block_size(gaussian):
    """QLoRA's claim: for normally distributed weights NF4 has lower error than 4-bit absmax int."""
    for block in (32, 64, 128):
        nf4 = QuantScheme(4, "nf4", granularity="group", group_size=block)
        int4 = QuantScheme(4, "int", granularity="group", group_size=block)
        assert mse(gaussian, fake_quantize(gaussian, nf4)) < 0.85 * mse(
            gaussian, fake_quantize(gaussian, int4)
        )


def test_codes_stay_in_range_and_symmetric_int_needs_no_extra_negative_code(gaussian):
    for bits in range(2, 9):
        qt = quantize(gaussian, QuantScheme(bits, granularity="group", group_size=64))
        qmax = 2 ** (bits - 1) - 1
        assert int(qt.codes.min()) == -qmax and int(qt.codes.max()) == qmax  # -2**(b-1) only by clipping
        asym = quantize(gaussian, QuantScheme(bits, symmetric=False, granularity="group", group_size=64))
        assert int(asym.codes.min()) == 0 and int(asym.codes.max()) == 2**bits - 1
    assert int(quantize(gaussian, QuantScheme(4, "nf4", granularity="channel")).codes.max()) == 15


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 8),
    symmetric=st.booleans(),
    rows=st.integers(1, 6),
    groups=st.integers(1, 4),
    group_size=st.sampled_from([8, 32, 64]),
    scale_dtype=st.sampled_from(["float16", "bfloat16", "float32"]),
    seed=st.integers(0, 2**16),
    magnitude=st.sampled_from([1e-3, 1.0, 1e3]),
)
def test_int_error_is_at_most_half_a_step(
    bits, symmetric, rows, groups, group_size, scale_dtype, seed, magnitude
):
    scheme = QuantScheme(bits, "int", symmetric, "group", group_size, scale_dtype=scale_dtype)
    x = torch.randn(rows, groups * group_size, generator=torch.Generator().manual_seed(seed)) * magnitude
    qt = quantize(x, scheme)
    step = qt.scale.float().repeat_interleave(group_size, dim=-1)  # (rows, in_features)
    err = (x - qt.dequantize()).abs()
    assert bool((err <= step * 0.5 * (1 + 1e-5) + 1e-30).all())
    assert torch.equal(qt.dequantize(), fake_quantize(x, scheme))


def test_stored_scales_are_in_scale_dtype_and_rounded_up():
    x = _weight(64, 128)
    for scale_dtype in ("float16", "bfloat16", "float32"):
        scheme = QuantScheme(8, granularity="channel", scale_dtype=scale_dtype)
        qt = quantize(x, scheme)
        assert qt.scale.dtype == scheme.torch_scale_dtype
        raw = x.abs().amax(dim=-1, keepdim=True) / 127
        assert bool((qt.scale.float() >= raw).all())
        assert bool((qt.scale.float() <= raw * (1 + 2 * torch.finfo(scheme.torch_scale_dtype).eps)).all())


def test_degenerate_blocks():
    zeros = torch.zeros(4, 64)
    for scheme in ALL_SCHEMES:
        assert torch.equal(fake_quantize(zeros, scheme), zeros)
    constant = torch.full((4, 64), -0.3)
    for label in ("int8 asym channel", "int4 g32", "nf4 g32", "fp8_e4m3 tensor"):
        y = fake_quantize(constant, QuantScheme.from_label(label))
        torch.testing.assert_close(y, constant, rtol=2e-3, atol=0)
    tiny = torch.randn(8, 64, generator=torch.Generator().manual_seed(0)) * 1e-4
    assert (
        sqnr_db(tiny, fake_quantize(tiny, QuantScheme(8, granularity="channel"))) > 35
    )  # fp16 subnormal scales
    tinier = tiny * 1e-2  # scale ~2e-8 is below float16's smallest subnormal: honest, coarser, finite
    assert 20 < sqnr_db(tinier, fake_quantize(tinier, QuantScheme(8, granularity="channel"))) < 40
    assert (
        sqnr_db(tinier, fake_quantize(tinier, QuantScheme(8, granularity="channel", scale_dtype="float32")))
        > 40
    )


def test_scale_overflow_names_the_fix():
    huge = torch.randn(4, 64) * 1e9
    with pytest.raises(ValueError, match="use scale_dtype='float32'"):
        quantize(huge, QuantScheme(8, granularity="channel"))
    ok = fake_quantize(huge, QuantScheme(8, granularity="channel", scale_dtype="float32"))
    assert sqnr_db(huge, ok) > 35


def test_group_size_must_divide_in_features_at_quantize_time():
    scheme = QuantScheme(4, granularity="group", group_size=100)
    for fn in (quantize, fake_quantize, choose_qparams):
        with pytest.raises(ValueError) as err:
            fn(torch.randn(1536, 576), scheme)
        assert (
            "group size 100 does not divide the rows of 576 values; pick a group size of 16, 32, 48, 64, 96 or 192"
            in str(err.value)
        )
    with pytest.raises(ValueError, match="0-d"):
        quantize(torch.tensor(1.0), QuantScheme(8, granularity="tensor"))


def test_clip_ratio_clips_the_range():
    x = torch.linspace(-1, 1, 256).reshape(2, 128)
    y = fake_quantize(x, QuantScheme(8, granularity="channel", clip_ratio=0.5))
    step = float(y.max()) / 127
    assert float(y.max()) == pytest.approx(0.5, rel=1e-3)
    assert float(y.min()) == pytest.approx(-128 * step)  # the extra negative code is reached by clipping
    with_outlier = torch.randn(64, 256, generator=torch.Generator().manual_seed(3))
    with_outlier[0, 0] = 60.0
    plain = QuantScheme(4, granularity="tensor")
    clipped = dataclasses.replace(plain, clip_ratio=0.1)
    assert mse(with_outlier, fake_quantize(with_outlier, clipped)) < mse(
        with_outlier, fake_quantize(with_outlier, plain)
    )


# -- storage ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "bpw"),
    [
        ("int4 g128", 4.125),
        ("int4 asym g128", 4.25),
        ("nf4 g64 scale_fp32", 4.5),
        ("int8 tensor", 8 + 16 / (1024 * 1024)),
        ("int4 g32", 4.5),
        ("int3 g64", 3.25),
    ],
)
def test_nbytes_and_bits_per_weight(gaussian, label, bpw):
    scheme = QuantScheme.from_label(label)
    qt = quantize(gaussian, scheme)
    assert qt.bits_per_weight == pytest.approx(bpw, abs=1e-12)
    assert qt.nbytes == expected_nbytes(scheme, gaussian.shape)
    assert qt.bits_per_weight == bits_per_weight(scheme, 1024, 1024)


def test_double_quant_storage_and_accuracy(gaussian):
    scheme = QuantScheme.from_label("nf4 g64 scale_fp32 dq")
    qt = quantize(gaussian, scheme)
    assert qt.scale_quant is not None and qt.scale_quant.codes.dtype == torch.int8
    n_scales = 1024 * 1024 // 64
    assert qt.scale_quant.codes.numel() == n_scales and qt.scale_quant.block_scale.numel() == n_scales // 256
    assert qt.nbytes == 1024 * 1024 // 2 + n_scales + 4 * (n_scales // 256) + 4
    assert qt.bits_per_weight == pytest.approx(4.127, abs=1e-3) == bits_per_weight(scheme, 1024, 1024)
    raw = gaussian.reshape(-1, 64).abs().amax(dim=-1)
    assert float(((qt.scale.reshape(-1) - raw).abs() / raw).max()) < 0.01  # 8-bit scales: < 1% off
    plain = dataclasses.replace(scheme, double_quant=False)
    assert sqnr_db(gaussian, qt.dequantize()) > sqnr_db(gaussian, fake_quantize(gaussian, plain)) - 0.05
    odd = double_quantize_scales(torch.rand(300) + 0.5)  # 300 scales: two blocks, the last one short
    torch.testing.assert_close(odd.dequantize().shape, torch.Size([300]))
    assert odd.nbytes == 300 + 2 * 4 + 4


# -- packing ---------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(1, 9), min_size=1, max_size=3),
    signed=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_pack_unpack_round_trip(shape, signed, seed):
    g = torch.Generator().manual_seed(seed)
    low, high = (-8, 8) if signed else (0, 16)
    codes = torch.randint(low, high, shape, generator=g).to(torch.int8 if signed else torch.uint8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.numel() == (codes.numel() + 1) // 2
    assert torch.equal(unpack_int4(packed, codes.shape, signed=signed), codes)


def test_pack_nibble_order_and_errors():
    assert pack_int4(torch.tensor([1, 2, 15], dtype=torch.uint8)).tolist() == [0x12, 0xF0]
    assert pack_int4(torch.tensor([-1, -8], dtype=torch.int8)).tolist() == [0xF8]
    with pytest.raises(ValueError, match=r"\[0, 15\]"):
        pack_int4(torch.tensor([16], dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[-8, 7\]"):
        pack_int4(torch.tensor([9], dtype=torch.int8))
    with pytest.raises(ValueError, match="uint8 or int8"):
        pack_int4(torch.tensor([1]))
    with pytest.raises(ValueError, match="expected 2 packed uint8 bytes"):
        unpack_int4(torch.zeros(3, dtype=torch.uint8), (4,))


@pytest.mark.parametrize("label", ["int4 g32", "int4 asym g32", "int2 asym channel", "nf4 g64", "fp4 g32"])
def test_qtensor_packed_codes_round_trip(label):
    scheme = QuantScheme.from_label(label)
    qt = quantize(_weight(), scheme)
    packed = qt.packed()
    assert packed.numel() * 2 == qt.codes.numel()
    signed = qt.codes.dtype == torch.int8
    assert torch.equal(unpack_int4(packed, qt.shape, signed=signed), qt.codes)
    with pytest.raises(ValueError, match="at most 4 bits"):
        quantize(_weight(), QuantScheme(8)).packed()


# -- static quantization ---------------------------------------------------------------------------


def test_static_per_tensor_matches_dynamic_per_tensor():
    x = _weight(32, 64)
    for label in ("int8 tensor", "int4 asym tensor", "nf4 tensor", "fp8_e4m3 tensor"):
        scheme = QuantScheme.from_label(label)
        scale, zero = choose_qparams(x, scheme)
        assert scale.shape == (1, 1)
        static = fake_quantize(x, scheme, scale.reshape(()), None if zero is None else zero.reshape(()))
        assert torch.equal(static, fake_quantize(x, scheme))
        qt = quantize(x, scheme, scale, zero)
        assert qt.static and torch.equal(dequantize(qt), static)


def test_static_fp8_with_unit_scale_is_a_plain_cast():
    x = torch.randn(16, 32) * 50
    scheme = QuantScheme(8, "fp8_e4m3", granularity="tensor")
    y = fake_quantize(x, scheme, scale=torch.tensor(1.0))
    assert torch.equal(y, x.to(torch.float8_e4m3fn).float())
    assert quantize(x, scheme, scale=torch.tensor(1.0)).codes.dtype == torch.float8_e4m3fn


def test_static_per_feature_scales_broadcast_along_the_last_dim():
    x = torch.randn(4, 10, 64) * torch.linspace(0.1, 10, 64)  # (batch, tokens, features)
    scheme = QuantScheme(8, symmetric=False, granularity="channel")
    flat = x.reshape(-1, 64)
    scale, zero = qparams_from_range(flat.amin(dim=0), flat.amax(dim=0), scheme)  # (features,)
    y = fake_quantize(x, scheme, scale, zero)
    assert y.shape == x.shape and sqnr_db(x, y) > 35
    qt = quantize(x, scheme, scale, zero)
    assert qt.scale.shape == (64,) and torch.equal(qt.dequantize(), y)


def test_static_argument_errors():
    x = torch.randn(4, 8)
    sym, asym = QuantScheme(8, granularity="tensor"), QuantScheme(8, symmetric=False, granularity="tensor")
    with pytest.raises(ValueError, match="pass zero_point together with scale"):
        fake_quantize(x, asym, torch.tensor(0.1))
    with pytest.raises(ValueError, match="has no zero point"):
        fake_quantize(x, sym, torch.tensor(0.1), torch.tensor(3.0))
    with pytest.raises(ValueError, match="does not broadcast"):
        fake_quantize(x, sym, torch.ones(5))
    with pytest.raises(ValueError, match="drop it for static scales"):
        fake_quantize(x, QuantScheme(8, granularity="channel", double_quant=True), torch.tensor(0.1))


def test_fake_quantize_does_not_modify_its_input_or_track_gradients():
    x = _weight()
    before = x.clone()
    for scheme in ALL_SCHEMES:
        fake_quantize(x, scheme)
        quantize(x, scheme)
    assert torch.equal(x, before)
    w = torch.randn(8, 64, requires_grad=True)
    for scheme in ALL_SCHEMES:
        assert not fake_quantize(w, scheme).requires_grad
        assert not quantize(w, scheme).dequantize().requires_grad


@pytest.mark.parametrize(
    "label", ["int4 asym g32", "int8 channel", "nf4 tensor", "fp8_e5m2 g32", "int3 tensor"]
)
def test_chunking_does_not_change_results(monkeypatch, label):
    import engine.quant.primitives as primitives

    scheme = QuantScheme.from_label(label)
    x = _weight(37, 256, seed=5)
    whole = fake_quantize(x, scheme), quantize(x, scheme).codes
    monkeypatch.setattr(
        primitives, "CHUNK_ELEMENTS", 100
    )  # smaller than a row: one row (or 100 values) a step
    assert torch.equal(fake_quantize(x, scheme), whole[0])
    assert torch.equal(quantize(x, scheme).codes, whole[1])
    monkeypatch.setattr(primitives, "CHUNK_ELEMENTS", 1000)  # several rows a step, ragged last chunk
    assert torch.equal(fake_quantize(x, scheme), whole[0])
    assert torch.equal(quantize(x, scheme).codes, whole[1])
