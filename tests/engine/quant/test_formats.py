"""Number formats: codebooks, nearest-entry lookup, int ranges and FP8 casts."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.quant import formats
from engine.quant.schemes import QuantScheme

pytestmark = pytest.mark.usefixtures("single_thread")


def _qlora_normal_map(offset: float = 0.9677083) -> torch.Tensor:
    """NF4 rebuilt from QLoRA's recipe (bitsandbytes' create_normal_map), independently of our table."""
    ndtri = torch.special.ndtri
    positive = ndtri(torch.linspace(offset, 0.5, 9, dtype=torch.float64)[:-1])  # 8 positive quantiles
    negative = -ndtri(torch.linspace(offset, 0.5, 8, dtype=torch.float64)[:-1])  # 7 negative quantiles
    values = torch.cat([positive, torch.zeros(1, dtype=torch.float64), negative]).sort().values
    return values / values.abs().max()


def test_nf4_codebook_is_qlora_normal_map():
    code = formats.codebook("nf4")
    assert code.dtype == torch.float32 and code.numel() == 16
    assert torch.equal(code, code.sort().values)  # NF4 index order is value order
    assert code[0] == -1 and code[7] == 0 and code[15] == 1
    torch.testing.assert_close(code.double(), _qlora_normal_map(), atol=1e-6, rtol=0)


def test_fp4_codebook_is_e2m1_in_bit_pattern_order():
    code = formats.codebook("fp4")
    magnitudes = torch.tensor([0, 0.0625, 8, 12, 4, 6, 2, 3]) / 12
    torch.testing.assert_close(code[:8], magnitudes)
    torch.testing.assert_close(code[8:], -magnitudes)
    assert torch.signbit(code[8]) and not torch.signbit(code[0])  # -0 and +0 are distinct codes
    with pytest.raises(ValueError, match="has no codebook"):
        formats.codebook("int")


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_nearest_position_equals_bucketize_including_midpoints(fmt):
    values, midpoints, _ = formats.codebook_search(fmt)
    g = torch.Generator().manual_seed(0)
    up, down = torch.full_like(midpoints, 2.0), torch.full_like(midpoints, -2.0)
    s = torch.cat(
        [
            torch.rand(200_000, generator=g) * 2 - 1,
            torch.randn(50_000, generator=g).clamp(-1, 1) * 1e-3,
            midpoints,
            torch.nextafter(midpoints, up),
            torch.nextafter(midpoints, down),
            values,
            torch.tensor([0.0, -0.0, 1.0, -1.0, 1e-30, -1e-30, 1e-45]),
        ]
    )
    expected = torch.bucketize(s, midpoints, out_int32=True)
    assert torch.equal(formats.nearest_position(s, fmt), expected)
    assert formats.nearest_position(s.view(-1, 7), fmt).shape == (s.numel() // 7, 7)


@pytest.mark.parametrize(
    ("bits", "symmetric", "expected"),
    [(4, True, (-8, 7)), (4, False, (0, 15)), (8, True, (-128, 127)), (2, True, (-2, 1))],
)
def test_int_range(bits, symmetric, expected):
    assert formats.int_range(bits, symmetric) == expected


def test_grid_values():
    assert formats.grid_values(QuantScheme(4, granularity="tensor")).tolist() == list(range(-8, 8))
    assert formats.grid_values(QuantScheme(3, symmetric=False)).tolist() == list(range(8))
    assert torch.equal(formats.grid_values(QuantScheme(4, "nf4")), formats.codebook("nf4"))
    e4m3 = formats.grid_values(QuantScheme(8, "fp8_e4m3"))
    assert e4m3.max() == 448 and e4m3.min() == -448 and e4m3.numel() == 253  # 256 - 2 NaN - duplicate 0
    e5m2 = formats.grid_values(QuantScheme(8, "fp8_e5m2"))
    assert e5m2.max() == 57344 and torch.isfinite(e5m2).all()


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_encode_is_torch_cast_with_saturation(fmt):
    scheme = QuantScheme(8, fmt, granularity="tensor")
    dtype = formats.FP8_DTYPES[fmt]
    fmax = torch.finfo(dtype).max
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4096, generator=g) * fmax / 4
    one = torch.tensor(1.0)
    codes = formats.encode(x, one, None, scheme)
    assert codes.dtype == dtype
    assert torch.equal(codes.float(), x.to(dtype).float())  # in range: exactly torch's rounding
    big = torch.tensor([fmax * 3, -fmax * 3, float(fmax)])  # e5m2 would cast these to inf
    assert formats.encode(big, one, None, scheme).float().tolist() == [fmax, -fmax, fmax]
    assert torch.equal(formats.fake(x, one, None, scheme), x.to(dtype).float())
    scale = torch.tensor(4.0)  # x / 4 stays in range
    assert torch.equal(formats.fake(x, scale, None, scheme), (x * (1 / scale)).to(dtype).float() * scale)


SCHEMES = [
    QuantScheme(4, granularity="tensor"),
    QuantScheme(3, symmetric=False, granularity="tensor"),
    QuantScheme(8, symmetric=False, granularity="tensor"),
    QuantScheme(4, "nf4", granularity="tensor"),
    QuantScheme(4, "fp4", granularity="tensor"),
    QuantScheme(8, "fp8_e4m3", granularity="tensor"),
    QuantScheme(8, "fp8_e5m2", granularity="tensor"),
]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(SCHEMES),
    st.lists(st.floats(-1e4, 1e4, allow_nan=False, width=32), min_size=1, max_size=64),
    st.floats(1e-4, 1e3),
)
def test_fake_equals_decode_of_encode(scheme, values, scale_value):
    x = torch.tensor(values, dtype=torch.float32)
    scale = torch.tensor(scale_value, dtype=torch.float32)
    zero = torch.tensor(3.0) if scheme.has_zero_point else None
    codes = formats.encode(x, scale, zero, scheme)
    assert codes.dtype == formats.code_dtype(scheme)
    assert torch.equal(formats.fake(x, scale, zero, scheme), formats.decode(codes, scale, zero, scheme))
