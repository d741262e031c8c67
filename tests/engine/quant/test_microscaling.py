"""MX (OCP microscaling) and NVFP4: labels and bits per weight, validation, and bit-identical cross-checks
against torchao's reference (emulated) implementation and the gguf package's MXFP4."""

import numpy as np
import pytest
import torch

from engine.quant import formats
from engine.quant.elements import element
from engine.quant.microscaling import element_emax
from engine.quant.primitives import dequantize, fake_quantize, quantize
from engine.quant.schemes import QuantScheme, bits_per_weight, storage_bits

pytestmark = pytest.mark.usefixtures("single_thread")

torchao_mx = pytest.importorskip("torchao.prototype.mx_formats.mx_tensor")  # requirements-dev.txt pins it
from torchao.prototype.mx_formats.constants import DTYPE_FP6_E2M3, DTYPE_FP6_E3M2  # noqa: E402
from torchao.prototype.mx_formats.kernels import unpack_uint4  # noqa: E402
from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale  # noqa: E402

MX = {
    "mxfp4": torch.float4_e2m1fn_x2,
    "mxfp6_e2m3": DTYPE_FP6_E2M3,
    "mxfp6_e3m2": DTYPE_FP6_E3M2,
    "mxfp8_e4m3": torch.float8_e4m3fn,
    "mxfp8_e5m2": torch.float8_e5m2,
}
MODES = {"": torchao_mx.ScaleCalculationMode.FLOOR, " rceil": torchao_mx.ScaleCalculationMode.RCEIL}


# -- labels, bits, validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "fmt", "group", "scale_dtype", "bpw"),
    [
        ("mxfp4", "fp4_e2m1", 32, "e8m0", 4.25),
        ("mxfp6_e2m3", "fp6_e2m3", 32, "e8m0", 6.25),
        ("mxfp6_e3m2", "fp6_e3m2", 32, "e8m0", 6.25),
        ("mxfp8_e4m3", "fp8_e4m3", 32, "e8m0", 8.25),
        ("mxfp8_e5m2", "fp8_e5m2", 32, "e8m0", 8.25),
        ("mxfp4 rceil", "fp4_e2m1", 32, "e8m0_rceil", 4.25),
        ("nvfp4", "fp4_e2m1", 16, "e4m3", 4.5),
    ],
)
def test_preset_labels_parse_print_and_cost_exact_bits(label, fmt, group, scale_dtype, bpw):
    scheme = QuantScheme.from_label(label)
    assert (scheme.format, scheme.granularity, scheme.group_size, scheme.scale_dtype) == (
        fmt,
        "group",
        group,
        scale_dtype,
    )
    assert scheme.label == label and QuantScheme.from_label(scheme.label) == scheme
    assert bits_per_weight(scheme) == bpw
    tensor_bits = 32 if label == "nvfp4" else 0  # NVFP4's float32 per-tensor scale
    assert storage_bits(scheme, (576, 1536)) == bpw * 576 * 1536 + tensor_bits
    assert bits_per_weight(scheme, 1536, 576) == bpw + tensor_bits / (576 * 1536)
    x = torch.randn(576, 1536, generator=torch.Generator().manual_seed(0))
    assert quantize(x, scheme).nbytes * 8 == storage_bits(scheme, (576, 1536))


def test_elements_and_scales_through_the_usual_grammar():
    assert QuantScheme.from_label("fp4_e2m1 g64").label == "fp4_e2m1 g64"
    assert QuantScheme.from_label("fp4_e2m1 g64").bits == 4
    scheme = QuantScheme.from_label("fp6_e3m2 channel scale_e8m0_rceil")
    assert scheme.label == "fp6_e3m2 channel scale_e8m0_rceil"
    assert QuantScheme.from_label("fp4_e2m1 g32 scale_e8m0 rceil").label == "mxfp4 rceil"
    assert QuantScheme.from_label("fp4_e2m1 g16 scale_e4m3") == QuantScheme.from_label("nvfp4")
    assert QuantScheme.from_label("mxfp8") == QuantScheme.from_label("mxfp8_e4m3")
    assert QuantScheme.from_label("nvfp4 clip0.9").label == "nvfp4 clip0.9"


def test_bitsandbytes_fp4_is_labelled_as_such_and_fp4_still_reads():
    assert QuantScheme(4, "fp4", granularity="group", group_size=64).label == "bnb_fp4 g64"
    assert QuantScheme.from_label("fp4 g64") == QuantScheme.from_label("bnb_fp4 g64")
    assert QuantScheme.from_label("bnb_fp4 g64").format == "fp4"


@pytest.mark.parametrize(
    ("label", "message"),
    [
        ("nvfp4 g32", "nvfp4 fixes its format, blocks of 16"),
        ("mxfp4 g64", "mxfp4 fixes its format, blocks of 32"),
        ("int4 asym g32 scale_e8m0", "has no zero point; pick a symmetric range"),
        ("nf4 g64 scale_e4m3", "goes with the small float elements"),
        ("int8 g32 scale_e8m0", "goes with the small float elements"),
        ("int4 g32 rceil", "rceil .* only applies to E8M0 scales"),
        ("fp4_e2m1 g32 scale_e4m3 rceil", "only applies to E8M0 scales"),
        ("mxfp4 dq", "already 8 bits"),
        ("fp6_e2m3 g32 scale_e9m0", "microscaling scale: e8m0, e8m0_rceil, e4m3"),
    ],
)
def test_bad_combinations_are_refused_in_words(label, message):
    with pytest.raises(ValueError, match=message):
        QuantScheme.from_label(label)
    with pytest.raises(ValueError, match="takes no given scale"):
        quantize(torch.ones(4, 32), QuantScheme.from_label("mxfp4"), scale=torch.tensor(1.0))
    with pytest.raises(ValueError, match="takes 4 bits"):
        QuantScheme(6, "fp4_e2m1")


def test_element_grids_are_the_ocp_values():
    scheme = QuantScheme.from_label("fp4_e2m1 g32")
    grid = formats.grid_values(scheme)
    half = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    assert grid.tolist() == [-v for v in reversed(half[1:])] + half
    assert formats.grid_max(QuantScheme.from_label("fp6_e2m3 g32")) == 7.5
    assert formats.grid_max(QuantScheme.from_label("fp6_e3m2 g32")) == 28.0
    assert len(formats.grid_values(QuantScheme.from_label("fp6_e2m3 g32"))) == 63  # 64 codes, +-0 merge
    emax = {name: element_emax(element(name)) for name in ("fp4_e2m1", "fp6_e2m3", "fp6_e3m2", "fp8_e4m3")}
    assert emax == {"fp4_e2m1": 2, "fp6_e2m3": 2, "fp6_e3m2": 4, "fp8_e4m3": 8}
    assert element_emax(element("fp8_e5m2")) == 15


def test_e2m1_rounds_ties_to_even_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, -5.0, -0.1, 100.0, 0.0])
    rounded = element("fp4_e2m1")._round(x, torch.tensor(1.0))
    assert rounded.tolist() == [0, 1, 1, 2, 2, 4, 4, 6, -4, 0, 6, 0]
    assert torch.signbit(rounded[9])  # -0.1 rounds to -0: code 0b1000, as torchao encodes it
    # a block with absmax 100 gets 2**(floor(log2 100) - 2) = 16: 100 / 16 = 6.25 saturates to 6
    qt = quantize(torch.cat([x, torch.zeros(20)]).view(1, 32), QuantScheme.from_label("mxfp4"))
    assert qt.scale.float().item() == 16.0
    assert qt.dequantize()[0, 10].item() == 96.0
    assert qt.codes[0, [8, 9, 10]].tolist() == [0b1001, 0b1000, 0b0111]  # -0.5, -0, 6 (sign bit on top)


# -- cross-checks against torchao -------------------------------------------------------------------------


def _synthetic() -> torch.Tensor:
    """Blocks with outliers, exact ties of every element grid, tiny and all-zero blocks, negatives."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 256, generator=g) * 0.02
    x[0, 5] = 40.0  # an outlier
    x[1, 40:48] = torch.tensor([5.0, 2.5, 0.25, 0.75, 1.25, 1.75, 3.5, 6.0])  # E2M1 ties at scale 1
    x[2, 64:72] = torch.tensor([7.25, 6.75, 0.0625, 3.25, 27.0, 26.0, 30.0, -14.0])  # E2M3 / E3M2 ties
    x[3, 96:128] = 0.0  # an all-zero block
    x[4, 128:160] = 1e-30  # a tiny block
    x[5] = -x[5].abs() * 1000  # large negatives
    x[6, 0:32] = torch.linspace(-6, 6, 32)
    return x


def _default_model_weights(default_loaded) -> list[torch.Tensor]:
    model = default_loaded.model
    layer = model.model.layers[0]
    return [
        layer.self_attn.q_proj.weight.detach().float().contiguous(),
        layer.self_attn.k_proj.weight.detach().float().contiguous(),
        layer.mlp.down_proj.weight.detach().float().contiguous(),
        model.model.layers[-1].mlp.up_proj.weight.detach().float().contiguous(),
    ]


def _torchao_mx(x: torch.Tensor, dtype, mode) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(scale bytes, element codes as uint8, dequantized) from torchao's reference to_mx / to_dtype."""
    scale, data = torchao_mx.to_mx(x, dtype, 32, mode)
    values = torchao_mx.to_dtype(data, scale, dtype, 32, torch.float32)
    codes = (
        unpack_uint4(data.view(torch.uint8)) if dtype == torch.float4_e2m1fn_x2 else data.view(torch.uint8)
    )
    return scale.view(torch.uint8), codes.reshape(x.shape), values


def _check_mx(x: torch.Tensor, label: str, suffix: str) -> None:
    scale, codes, values = _torchao_mx(x, MX[label], MODES[suffix])
    qt = quantize(x, QuantScheme.from_label(label + suffix))
    assert torch.equal(qt.scale.view(torch.uint8), scale)
    assert torch.equal(qt.codes.view(torch.uint8), codes)
    ours = dequantize(qt)
    assert torch.equal(ours, values)
    assert torch.equal(fake_quantize(x, QuantScheme.from_label(label + suffix)), ours)


def _check_nvfp4(x: torch.Tensor) -> None:
    reference = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().max()))
    qt = quantize(x, QuantScheme.from_label("nvfp4"))
    assert torch.equal(qt.tensor_scale, reference.per_tensor_scale)
    assert torch.equal(qt.scale.view(torch.uint8), reference.scale.view(torch.uint8))
    assert torch.equal(qt.codes, unpack_uint4(reference.qdata.view(torch.uint8)).reshape(x.shape))
    assert torch.equal(dequantize(qt), reference.dequantize(torch.float32))
    assert torch.equal(fake_quantize(x, QuantScheme.from_label("nvfp4")), dequantize(qt))


@pytest.mark.parametrize("suffix", list(MODES))
@pytest.mark.parametrize("label", list(MX))
def test_mx_matches_torchao_on_synthetic_blocks(label, suffix):
    _check_mx(_synthetic(), label, suffix)


@pytest.mark.parametrize("suffix", list(MODES))
@pytest.mark.parametrize("label", list(MX))
def test_mx_matches_torchao_on_default_model_weights(default_loaded, label, suffix):
    for weight in _default_model_weights(default_loaded):
        _check_mx(weight, label, suffix)


def test_nvfp4_matches_torchao_on_synthetic_and_default_model_weights(default_loaded):
    _check_nvfp4(_synthetic())
    for weight in _default_model_weights(default_loaded):
        _check_nvfp4(weight)


def _torchao_codes_and_scales(x: torch.Tensor, label: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(element codes, block scale bytes) from torchao's reference: MXFP4 (FLOOR) or NVFP4."""
    if label == "nvfp4":
        reference = NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(x.abs().max()))
        scale, data = reference.scale, reference.qdata
    else:
        scale, data = torchao_mx.to_mx(x, MX[label], 32, MODES[""])
    return unpack_uint4(data.view(torch.uint8)).reshape(x.shape), scale.view(torch.uint8)


@pytest.mark.parametrize("label", ["mxfp4", "nvfp4"])
def test_every_linear_weight_of_the_default_model_matches_torchao(default_loaded, label):
    """Codes and block scales of all 210 linear weights, bit for bit (each tensor on its own, so NVFP4
    gets its per-tensor scale); dequantizing is checked on the four weights above."""
    linears = [
        (name, module.weight.detach().float().contiguous())
        for name, module in default_loaded.model.model.layers.named_modules()
        if isinstance(module, torch.nn.Linear)
    ]
    assert len(linears) == 210  # 30 layers x (q, k, v, o, gate, up, down)
    scheme = QuantScheme.from_label(label)
    for name, weight in linears:
        codes, scale = _torchao_codes_and_scales(weight, label)
        qt = quantize(weight, scheme)
        assert torch.equal(qt.scale.view(torch.uint8), scale), name
        assert torch.equal(qt.codes, codes), name


def test_the_other_mx_elements_on_every_linear_weight(default_loaded):
    """MXFP6 (both elements) and MXFP8 (both) on all 210 linear weights, FLOOR and RCEIL: 16 rows spread
    over each weight (an MX block never leaves its row, so a row's codes are those of the whole tensor)."""
    weights = [
        module.weight.detach().float()
        for module in default_loaded.model.model.layers.modules()
        if isinstance(module, torch.nn.Linear)
    ]
    assert len(weights) == 210
    rows = torch.cat([w[torch.linspace(0, w.shape[0] - 1, 16).long()] for w in weights if w.shape[1] == 576])
    wide = torch.cat([w[torch.linspace(0, w.shape[0] - 1, 16).long()] for w in weights if w.shape[1] == 1536])
    for label in ("mxfp6_e2m3", "mxfp6_e3m2", "mxfp8_e4m3", "mxfp8_e5m2"):
        for suffix in MODES:
            _check_mx(rows, label, suffix)
            _check_mx(wide, label, suffix)


# -- cross-check against gguf (llama.cpp's reference quantizers) ------------------------------------------


def _gguf_mxfp4(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(E8M0 byte per block of 32, dequantized values) from the gguf package's MXFP4 reference."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize as gguf_dequantize
    from gguf.quants import quantize as gguf_quantize

    raw = gguf_quantize(x.numpy(), GGMLQuantizationType.MXFP4)
    scale = raw.reshape(-1, 17)[:, 0]  # each block of 32: one E8M0 byte, then 16 bytes of nibbles
    return scale, gguf_dequantize(raw, GGMLQuantizationType.MXFP4).reshape(x.shape)


def _check_gguf(x: torch.Tensor) -> int:
    """gguf's MXFP4 (llama.cpp's rule) has our E8M0 byte, floor(log2(absmax)) - 2 + 127 (it stores the
    element table doubled and the scale halved), but picks the first nearest entry of its table
    (0, 1, 2, 3, 4, 6, 8, 12, then the negatives): an exact tie goes to the smaller magnitude, where
    the OCP rule (and torchao) rounds ties to even. Everything else agrees; returns the number of ties."""
    scale, values = _gguf_mxfp4(x)
    qt = quantize(x, QuantScheme.from_label("mxfp4"))
    assert np.array_equal(scale, qt.scale.view(torch.uint8).reshape(-1).numpy())
    ours = dequantize(qt).numpy()
    differ = ours != values
    block_scale = qt.scale.float().repeat_interleave(32, dim=-1).numpy()
    ratio = np.abs(x.numpy()[differ] / block_scale[differ])
    ties = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)
    assert np.isin(ratio, ties).all()  # only exact ties differ ...
    assert (np.abs(values[differ]) < np.abs(ours[differ])).all()  # ... and gguf took the smaller one
    return int(differ.sum())


def test_mxfp4_matches_gguf_except_ties_on_default_model_weights(default_loaded):
    for weight in _default_model_weights(default_loaded):
        _check_gguf(weight)


def test_mxfp4_ties_differ_from_gguf_as_documented():
    x = torch.tensor([[6.0, 0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0] * 4])  # absmax 6: scale 1
    _, values = _gguf_mxfp4(x)
    assert values[0, :8].tolist() == [6, 0, 0.5, 1, 1.5, 2, 3, 4]  # ties to the smaller magnitude
    ours = fake_quantize(x, QuantScheme.from_label("mxfp4"))
    assert ours[0, :8].tolist() == [6, 0, 1, 1, 2, 2, 4, 4]  # ties to even (OCP, torchao)
    assert _check_gguf(x) == 12  # 0.75, 1.75 and 3.5 differ (0.25, 1.25, 2.5 and 5 tie to even = smaller)
