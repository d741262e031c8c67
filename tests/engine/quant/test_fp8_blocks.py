"""DeepSeek-V3-style FP8 blocks (`fp8_e4m3 block128`): labels and exact bits, validation, partial edge tiles,
1 x 128 activation groups, and codes and scales bit-identical to torchao's float8 block reference on real
default-model weights."""

import math

import pytest
import torch

from engine.analysis.blocks import block_count, block_picture
from engine.methods.rtn import RTNConfig
from engine.quant.linear import quantized_linear
from engine.quant.primitives import dequantize, fake_quantize, fake_quantize_tokens, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight, parse_label, storage_bits
from engine.recipes import get
from engine.sizing.presets import PRESETS

pytestmark = pytest.mark.usefixtures("single_thread")

quant_primitives = pytest.importorskip("torchao.quantization.quant_primitives")  # requirements-dev pins it
FP8 = torch.float8_e4m3fn
BLOCK128 = QuantScheme(8, "fp8_e4m3", granularity="block", group_size=128, scale_dtype="float32")


def test_label_round_trips_and_bits_are_exact():
    assert BLOCK128.label == "fp8_e4m3 block128"
    assert parse_label("fp8_e4m3 block128") == BLOCK128  # a block's scale is float32 unless said otherwise
    assert QuantScheme(8, "fp8_e4m3", granularity="block", group_size=128) == BLOCK128
    fp16 = parse_label("fp8_e4m3 block64 scale_fp16")
    assert (fp16.group_size, fp16.scale_dtype, fp16.label) == (64, "float16", "fp8_e4m3 block64 scale_fp16")
    assert parse_label("int4 asym block32").label == "int4 asym block32"
    for out, inp in ((1536, 576), (576, 1536), (576, 576), (4096, 4096)):
        tiles = math.ceil(out / 128) * math.ceil(inp / 128)
        assert storage_bits(BLOCK128, (out, inp)) == 8 * out * inp + 32 * tiles
        assert bits_per_weight(BLOCK128, inp, out) == 8 + 32 * tiles / (out * inp)
    assert bits_per_weight(BLOCK128) == 8 + 32 / 128**2  # 8.002, the large-matrix limit
    x = torch.randn(300, 576, generator=torch.Generator().manual_seed(0))
    assert quantize(x, BLOCK128).nbytes * 8 == storage_bits(BLOCK128, x.shape)


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("fp8_e4m3 block128 dq", "2-D blocks have few .* turn double quantization off"),
        ("fp8_e4m3 block128 scale_e8m0", "2-D blocks take a float32, float16 or bfloat16 scale"),
        ("fp8_e4m3 block128 scale_e4m3", "microscaling scales go with blocks along a row"),
        ("fp8_e4m3 block0", "the block size must be a positive whole number"),
        ("fp8_e4m3 block128 g64", "sets the granularity twice"),
    ],
)
def test_bad_block_schemes_are_refused_in_words(label, message):
    with pytest.raises(ValueError, match=message):
        parse_label(label)
    with pytest.raises(ValueError, match="2-D blocks need a block size"):
        QuantScheme(8, "fp8_e4m3", granularity="block")


def _deepseek_weight_quant(w: torch.Tensor, size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's `weight_quant` written out: per tile, scale = absmax / 448, codes = fp8(x / scale)."""
    tile_rows, tile_cols = math.ceil(w.shape[0] / size), math.ceil(w.shape[1] / size)
    codes, scale = torch.empty(w.shape, dtype=FP8), torch.empty(tile_rows, tile_cols)
    for i in range(tile_rows):
        for j in range(tile_cols):
            tile = w[i * size : (i + 1) * size, j * size : (j + 1) * size]
            scale[i, j] = tile.abs().max() / 448
            codes[i * size : (i + 1) * size, j * size : (j + 1) * size] = (tile / scale[i, j]).to(FP8)
    return codes, scale


def _torchao_block(
    w: torch.Tensor, block: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scales, values) from torchao's float8 block reference (Float8Tensor's PerBlock path); partial
    edge tiles are zero-padded to whole tiles first, which leaves every tile's absmax as it is, and cut off."""
    rows, cols = w.shape
    padded = torch.nn.functional.pad(w, (0, (-cols) % block[1], 0, (-rows) % block[0]))
    scale = quant_primitives._choose_scale_float8(padded, list(block), FP8)
    codes = quant_primitives._quantize_affine_float8(padded, scale, FP8)
    values = quant_primitives._dequantize_affine_float8(codes, scale)
    return codes[:rows, :cols], scale, values[:rows, :cols]


@pytest.fixture(scope="module")
def weights(default_loaded):
    """Real weights with partial tiles on both sides: 1536 x 576 (up_proj) and 576 x 1536 (down_proj)."""
    mlp = default_loaded.model.model.layers[0].mlp
    return [
        mlp.up_proj.weight.detach().float().contiguous(),
        mlp.down_proj.weight.detach().float().contiguous(),
    ]


def test_weights_match_torchao_and_deepseek_bit_for_bit(weights):
    for w in weights:
        qt = quantize(w, BLOCK128)
        codes, scale, values = _torchao_block(w, (128, 128))
        assert qt.scale.shape == scale.shape == (math.ceil(w.shape[0] / 128), math.ceil(w.shape[1] / 128))
        assert torch.equal(qt.scale, scale)
        assert torch.equal(qt.codes.view(torch.uint8), codes.view(torch.uint8))
        ds_codes, ds_scale = _deepseek_weight_quant(w)
        assert torch.equal(qt.scale, ds_scale)
        assert torch.equal(qt.codes.view(torch.uint8), ds_codes.view(torch.uint8))
        assert torch.equal(dequantize(qt), values)
        assert torch.equal(fake_quantize(w, BLOCK128), values)


def test_activations_go_in_1x128_groups_per_token_like_torchao(weights):
    x = weights[0][:7] * 30  # seven "tokens" of 576 values: groups of 128, the last one of 64
    _, _, expected = _torchao_block(x, (1, 128))
    assert torch.equal(fake_quantize_tokens(x, BLOCK128), expected)
    assert not torch.equal(fake_quantize(x, BLOCK128), expected)  # 128 x 128 tiles share across tokens
    layer = quantized_linear(weights[0], None, BLOCK128, BLOCK128)  # the default model's W8A8 FP8 block
    out = layer(x.view(1, 7, 576))
    assert torch.equal(out.view(7, -1), torch.nn.functional.linear(expected, layer.weight))


def test_other_formats_edge_tiles_and_more_dims():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 100, generator=g)
    x[1, 2, 99] = 50.0  # an outlier in the last, partial tile only
    for label in ("int8 block64", "int4 asym block64", "int4 asym_min block32", "nf4 block64 scale_fp32"):
        scheme = parse_label(label)
        qt = quantize(x, scheme)
        assert qt.codes.shape == x.shape and qt.scale.shape == (1, math.ceil(100 / scheme.group_size))
        assert torch.equal(dequantize(qt), fake_quantize(x, scheme))
        assert qt.nbytes * 8 == storage_bits(scheme, x.shape)
    scale = quantize(x, parse_label("int8 block64")).scale
    assert scale[0, 1] == pytest.approx(50.0 / 127) and scale[0, 0] < 1.0  # the outlier stays in its tile


def test_grid_page_picks_tiles(weights):
    w = weights[1]  # 576 x 1536: tiles of 5 x 12, the last tile row 64 rows high
    assert block_count(tuple(w.shape), BLOCK128) == (5, 12)
    picture = block_picture(w, BLOCK128, row=4, block=11)
    tile = w[512:, 1408:]
    assert picture.block_elements == tile.numel() == 64 * 128
    assert picture.scale == float(tile.abs().max() / 448)
    assert "rows 512-575, columns 1408-1535" in picture.description


def test_recipes_presets_and_rtn_label():
    w8a8 = get("W8A8 FP8 block128")
    assert w8a8.method.weights == w8a8.method.activations == BLOCK128
    assert w8a8.method.label == "W8A8 fp8_e4m3 block128"
    assert w8a8.for_model(576, 1536) is w8a8  # tiles need no group size that divides the rows
    assert get("W8 FP8 block128").method == RTNConfig(BLOCK128)
    preset = PRESETS["fp8-block128"]
    assert preset.linear_bits_for(4096) == 8 + 32 / 128**2
    assert preset.linear_bits_for(576) == 8 + 32 * 5 / (128 * 576)  # a partial last tile counted whole
