"""Packed int4 / int8 kernels against their reference (dequantize + matmul), our grid, and the default model.

CPU kernels (aten's int4 / int8 packed ops in bf16, `torch._int_mm`) run everywhere; the CUDA and Triton
paths are marked `gpu` and skip without CUDA. The Speed engine's small pieces are checked at the end.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engine.kernels import QuantLinear, cpu, packed_format, reference, to_quant_linears
from engine.methods import PackedRTNConfig, RTNConfig, quantize_model
from engine.quant.primitives import fake_quantize, quantize
from engine.quant.schemes import QuantScheme
from tests.conftest import build_char_tokenizer, build_tiny_llama, checksum

pytestmark = pytest.mark.usefixtures("single_thread")  # small matmuls: a second OpenMP thread only waits

INT4_ASYM_G64 = QuantScheme(4, "int", False, "group", 64)
INT4_SYM_G32 = QuantScheme(4, "int", True, "group", 32)
INT8 = QuantScheme(8, "int", True, "channel")
FORMATS = {  # name -> (weights, activations)
    "W4A16 asym g64": (INT4_ASYM_G64, None),
    "W4A16 sym g32": (INT4_SYM_G32, None),
    "W8A16": (INT8, None),
    "W8A8": (INT8, INT8),
}
SHAPES = [(576, 576), (1536, 576), (576, 1536), (192, 576)]  # (out, in): the default model's linears
FAST_CPU_KERNELS = {  # what may run on a CPU (engine.kernels.choice times the candidates)
    "W4A16": {"cpu_int4"},
    "W8A16": {"cpu_int8", "dequant_matmul"},
    "W8A8": {"cpu_w8a8"},
}
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def linear(out_features: int, in_features: int, seed: int = 0, device: str = "cpu") -> torch.nn.Linear:
    torch.manual_seed(seed)
    layer = torch.nn.Linear(in_features, out_features, bias=True)
    with torch.no_grad():
        layer.weight.mul_(torch.linspace(0.5, 2.0, in_features))  # uneven columns, like real weights
    return layer.to(device)


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


def assert_matches_reference(y: torch.Tensor, ref: torch.Tensor, tolerance: float = 1e-2) -> None:
    assert torch.isfinite(y).all(), "kernel output has NaN or inf"
    assert relative_error(y, ref) < tolerance
    # every element, not just the norm: an output left unwritten (zeros or garbage) fails here
    worst = (y.float() - ref.float()).abs().max()
    assert worst <= 4 * tolerance * ref.float().abs().max(), f"largest elementwise error {worst:.3g}"


@pytest.fixture(scope="module")
def modules():
    cache = {}

    def get(shape, fmt):
        if (shape, fmt) not in cache:
            weights, activations = FORMATS[fmt]
            cache[shape, fmt] = QuantLinear.from_linear(linear(*shape), weights, activations)
        return cache[shape, fmt]

    return get


# -- formats and our grid ----------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", [INT4_ASYM_G64, INT4_SYM_G32], ids=["asym g64", "sym g32"])
def test_int4_format_is_exactly_our_grid(scheme):
    weight = linear(192, 576).weight.detach()
    codes, scales, zeros = reference.int4_from_qtensor(quantize(weight, scheme))
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 15
    dequantized = reference.dequantize_int4(codes, scales, zeros, scheme.group_size)
    assert torch.equal(dequantized, fake_quantize(weight, scheme))


def test_per_token_activations_are_our_int8_grid():
    x = torch.randn(16, 576) * torch.linspace(0.1, 8.0, 576)
    x[3] = 0.0  # an all-zero token
    codes, scales = reference.quantize_per_token(x)
    ours = quantize(x, QuantScheme(8, "int", True, "channel", scale_dtype="float32"))
    assert torch.equal(codes, ours.codes) and torch.equal(scales, ours.scale)


@pytest.mark.parametrize("rows", [576, 192, 1536, 48, 80, 16])
def test_cpu_int4_layout_roundtrip(rows):
    # the pinned torch 2.13.0 CPU build packs in one of the layouts unpack_int4 knows; if a CPU ever
    # packs differently, the fast path turns itself off and this test says so
    assert cpu.int4_layout_ok(), "this CPU's int4 layout is unknown: QuantLinear fell back to the reference"
    codes = torch.randint(
        0, 16, (rows, 128), generator=torch.Generator().manual_seed(rows), dtype=torch.uint8
    )
    scales, zeros = torch.rand(rows, 2), torch.randn(rows, 2)
    packed, scales_and_zeros = cpu.pack_int4(codes, scales, zeros, torch.float32)
    assert packed.shape == (rows, 64) and packed.dtype == torch.uint8  # 4 bits per code, nothing more
    assert torch.equal(cpu.unpack_int4(packed), codes)
    assert all(
        torch.equal(a, b)
        for a, b in zip(cpu.unpack_scales_and_zeros(scales_and_zeros), (scales, zeros), strict=True)
    )


def test_cpu_int4_weights_equal_fake_quant_within_rounding():
    layer = linear(1536, 576)
    module = QuantLinear.from_linear(layer, INT4_ASYM_G64)
    assert module.layout == "cpu_int4pack", "the default model's shapes take the CPU int4 kernel"
    qt = quantize(layer.weight.detach(), INT4_ASYM_G64)
    codes, scales, _ = reference.int4_from_qtensor(qt)
    assert torch.equal(module.codes_and_qparams()["codes"], codes)  # the same codes, bit for bit
    difference = (module.dequantized_weight() - fake_quantize(layer.weight.detach(), INT4_ASYM_G64)).abs()
    step = scales.repeat_interleave(64, dim=1)  # one grid step per weight
    assert (difference <= step / 32).all(), "bf16 scales move a weight by far less than a grid step"


# -- kernels against the reference ---------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("batch", [1, 4, 16])
def test_cpu_kernel_matches_reference(modules, shape, fmt, batch):
    module = modules(shape, fmt)
    assert module.kernel_for(batch) in FAST_CPU_KERNELS[module.fmt]
    x = torch.randn(batch, shape[1], generator=torch.Generator().manual_seed(batch))
    y = module(x)
    assert y.shape == (batch, shape[0]) and y.dtype == x.dtype
    assert_matches_reference(y, module.reference_forward(x))


def test_three_dim_inputs_and_large_batches(modules):
    module = modules((576, 576), "W4A16 asym g64")
    x = torch.randn(2, 130, 576)  # (batch, tokens, channels): prefill shapes
    y = module(x)
    assert y.shape == (2, 130, 576)
    assert_matches_reference(y, module.reference_forward(x))


def test_shapes_no_packed_op_takes_dequantize_then_multiply():
    """Groups of 16 and 100 output rows: aten's CPU int4 op refuses them, so the portable nibbles layout
    stores them and the dequantize-then-matmul kernel multiplies them (on any device)."""
    module = QuantLinear.from_linear(linear(100, 64), QuantScheme(4, "int", False, "group", 16))
    assert module.layout == "nibbles" and module.kernel_for(1) == "dequant_matmul"
    x = torch.randn(3, 64)
    assert_matches_reference(
        module(x), torch.nn.functional.linear(x, module.dequantized_weight(), module.bias)
    )


@pytest.mark.parametrize(
    ("weights", "activations", "message"),
    [
        (QuantScheme(4, "nf4", True, "group", 64), None, "nf4"),
        (QuantScheme(3, "int", True, "group", 64), None, "int3"),
        (QuantScheme(8, "int", False, "channel"), None, "asym"),
        (QuantScheme(4, "int", True, "group", 64), INT8, "activations"),
    ],
)
def test_unsupported_schemes_are_refused_with_a_reason(weights, activations, message):
    with pytest.raises(ValueError, match=message) as info:
        packed_format(weights, activations)
    assert "RTNConfig" in str(info.value)
    with pytest.raises(ValueError):
        PackedRTNConfig(weights, activations)


# -- whole models --------------------------------------------------------------------------------------------


def test_packed_tiny_model_matches_fake_quant_and_leaves_the_input_alone():
    tiny = build_tiny_llama()
    ids = torch.randint(0, 96, (2, 24), generator=torch.Generator().manual_seed(0))
    before = checksum(tiny)
    result = quantize_model(tiny, PackedRTNConfig(INT4_SYM_G32))
    assert checksum(tiny) == before and result.model is not tiny
    assert isinstance(result.model.model.layers[0].mlp.down_proj, QuantLinear)
    assert isinstance(result.model.lm_head, torch.nn.Linear)  # the head stays as it is
    assert {r.detail.decode_kernel for r in result.layers} == {"cpu_int4"}
    fake = quantize_model(tiny, RTNConfig(INT4_SYM_G32)).model
    with torch.no_grad():
        packed_logits, fake_logits = result.model(ids).logits, fake(ids).logits
    assert relative_error(packed_logits, fake_logits) < 1e-2


@pytest.mark.slow
def test_default_model_int4_decodes_like_fake_quant_rtn_in_4_5_bits(default_loaded):
    """SmolLM2-135M (576 wide: group 64): the packed int4 model greedily picks the fake-quant RTN model's
    first tokens, and its real bytes are 4.5 bits per linear weight (fp16-sized scale + zero per 64)."""
    from engine.runtime.generation import GenerationSettings, generate
    from engine.sizing.estimate import measured_bytes

    model, tokenizer = default_loaded.model, default_loaded.tokenizer
    packed = to_quant_linears(model, INT4_ASYM_G64)
    fake = quantize_model(model, RTNConfig(INT4_ASYM_G64)).model
    settings = GenerationSettings(max_new_tokens=6)
    prompt = "What is the capital of France?"
    packed_tokens = generate(packed, tokenizer, prompt, settings).token_ids
    fake_tokens = generate(fake, tokenizer, prompt, settings).token_ids
    assert packed_tokens[:4] == fake_tokens[:4]

    linear_weights = sum(
        m.in_features * m.out_features for m in packed.modules() if isinstance(m, QuantLinear)
    )
    linear_bytes_before = 4 * linear_weights  # float32 on CPU
    other_bytes = sum(measured_bytes(model).values()) - linear_bytes_before
    packed_linear_bytes = sum(measured_bytes(packed).values()) - other_bytes
    bits = 8 * packed_linear_bytes / linear_weights
    assert 4.4 < bits < 4.6, bits


def test_quantlinear_refuses_a_device_it_was_not_packed_for(modules):
    module = modules((576, 576), "W8A16")
    with pytest.raises(RuntimeError, match="packed for cpu"):
        module.kernel_for(1, "cuda")


# -- GPU --------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("batch", [1, 16, 200])  # GEMV, Triton GEMM, dequantize + cuBLAS
@pytest.mark.parametrize("shape", [(1536, 576), (192, 576), (11008, 4096)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_cuda_kernels_match_reference(shape, fmt, batch):
    weights, activations = FORMATS[fmt]
    module = QuantLinear.from_linear(linear(*shape, device="cuda"), weights, activations)
    x = torch.randn(batch, shape[1], device="cuda", dtype=torch.bfloat16)
    y = module(x)
    assert y.device.type == "cuda" and y.dtype == torch.bfloat16
    assert_matches_reference(y.cpu(), module.reference_forward(x.cpu()))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("fmt", ["W4A16", "W8A16"])
def test_every_decode_gemv_config_matches_reference_on_cuda(fmt):
    """Each config the autotuner may pick, run on its own on a Llama-2-7B-sized weight at batch 1."""
    from engine.kernels import cuda

    scheme = INT4_ASYM_G64 if fmt == "W4A16" else INT8
    module = QuantLinear.from_linear(linear(4096, 4096, device="cuda"), scheme)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    ref = module.reference_forward(x.cpu())
    configs = cuda.W4A16_GEMV_CONFIGS if fmt == "W4A16" else cuda.W8A16_GEMV_CONFIGS
    for index in range(len(configs)):
        if fmt == "W4A16":
            y = cuda.w4a16(x, module.qweight, module.scales, module.zeros, 64, gemv=index)
        else:
            y = cuda.w8a16(x, module.qweight, module.scales, gemv=index)
        assert_matches_reference((y + module.bias).cpu(), ref)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", [1, 16, 64])
def test_tinygemm_baseline_matches_reference(batch):
    from engine.kernels import cuda

    module = QuantLinear.from_linear(linear(1536, 576, device="cuda"), INT4_ASYM_G64)
    packed, scales_and_zeros = cuda.tinygemm_pack(**module.codes_and_qparams(), device="cuda")
    x = torch.randn(batch, 576, device="cuda", dtype=torch.bfloat16)
    y = cuda.tinygemm_mm(x, packed, scales_and_zeros, 64) + module.bias
    assert_matches_reference(y.cpu(), module.reference_forward(x.cpu()))


@pytest.mark.gpu
@needs_cuda
def test_packed_model_on_cuda_matches_fake_quant():
    tiny = build_tiny_llama()
    ids = torch.randint(0, 96, (1, 16))
    packed = to_quant_linears(build_tiny_llama().to("cuda", torch.bfloat16), INT4_SYM_G32)
    fake = quantize_model(tiny, RTNConfig(INT4_SYM_G32)).model  # fake quantization runs on the CPU
    with torch.no_grad():
        packed_logits = packed(ids.to("cuda")).logits.float().cpu()
        assert relative_error(packed_logits, fake(ids).logits) < 5e-2  # bf16 model vs float32


TRITON_INTERPRETER_CHECK = """
import torch
from engine.kernels import cuda, reference
from engine.quant.primitives import pack_int4, quantize
from engine.quant.schemes import QuantScheme

assert cuda.triton_available()
torch.manual_seed(0)
weight = torch.randn(100, 512) * torch.linspace(0.5, 2.0, 512)  # 100 rows: masked tail programs
worst = 0.0
for dtype, batches in ((torch.float32, (1, 3, 20)), (torch.float16, (1, 20)), (torch.bfloat16, (1, 3))):
    for scheme in (QuantScheme(4, "int", False, "group", 128), QuantScheme(4, "int", True, "group", 32)):
        codes, scales, zeros = reference.int4_from_qtensor(quantize(weight, scheme))
        nibbles = pack_int4(codes).view(100, 256)
        for m in batches:
            x = torch.randn(m, 512).to(dtype)
            zero_arg = None if scheme.symmetric else zeros.to(dtype)
            y = cuda.w4a16(x, nibbles, scales.to(dtype), zero_arg, scheme.group_size)
            ref = reference.int4_matmul(x, codes, scales, zeros, scheme.group_size)
            worst = max(worst, float((y.float() - ref.float()).norm() / ref.float().norm()))
    codes8, scales8 = reference.int8_from_qtensor(quantize(weight, QuantScheme(8)))
    for m in batches:
        x = torch.randn(m, 512).to(dtype)
        y = cuda.w8a16(x, codes8, scales8.to(dtype))
        ref = reference.int8_matmul(x, codes8, scales8)
        worst = max(worst, float((y.float() - ref.float()).norm() / ref.float().norm()))
# every decode GEMV config the autotuner may pick on a GPU (rows per program, K per step) computes the same
codes, scales, zeros = reference.int4_from_qtensor(quantize(weight, QuantScheme(4, "int", False, "group", 64)))
nibbles = pack_int4(codes).view(100, 256)
codes8, scales8 = reference.int8_from_qtensor(quantize(weight, QuantScheme(8)))
x = torch.randn(3, 512).half()
ref4 = reference.int4_matmul(x, codes, scales, zeros, 64)
ref8 = reference.int8_matmul(x, codes8, scales8)
for config in range(len(cuda.W4A16_GEMV_CONFIGS)):
    y = cuda.w4a16(x, nibbles, scales.half(), zeros.half(), 64, gemv=config)
    worst = max(worst, float((y.float() - ref4.float()).norm() / ref4.float().norm()))
for config in range(len(cuda.W8A16_GEMV_CONFIGS)):
    y = cuda.w8a16(x, codes8, scales8.half(), gemv=config)
    worst = max(worst, float((y.float() - ref8.float()).norm() / ref8.float().norm()))
print(worst)
"""


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")
def test_triton_kernels_in_the_interpreter():
    """Our Triton kernels on the CPU through TRITON_INTERPRET=1 (a fresh interpreter: the flag is read
    when Triton is imported). Triton 3.9's interpreter gets bf16 `tl.dot` wrong even in a 16x16 kernel
    of its own, so bf16 is checked at GEMV sizes only (batch <= 4); the GEMM runs fp32 and fp16."""
    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run(
        [sys.executable, "-c", TRITON_INTERPRETER_CHECK], cwd=root, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-2


# -- the Speed engine's pieces -----------------------------------------------------------------------------


def test_microbenchmark_reports_every_format_against_the_baseline():
    from engine.speed import LinearShape, available_formats, microbenchmark

    shape = LinearShape(192, 576)
    results = microbenchmark([shape], batches=[1, 4], repeats=3, warmup=1, rotate=False)
    assert {r.format for r in results} == set(available_formats("cpu"))
    for r in results:
        assert r.seconds > 0 and r.gbytes_per_s > 0 and r.tflops > 0 and r.speedup > 0
    assert {r.speedup for r in results if r.format == "fp32"} == {1.0}
    int4 = next(r for r in results if r.format == "W4A16")
    assert int4.kernel == "cpu_int4" and int4.bytes < next(r for r in results if r.format == "fp32").bytes / 6


def test_decode_benchmark_and_roofline_on_a_tiny_model():
    from engine.speed import build_variant, decode_benchmark

    tiny = build_tiny_llama()
    packed = build_variant(tiny, "W4A16")
    timing = decode_benchmark(
        packed, build_char_tokenizer(), "W4A16", "hello there", new_tokens=5, bandwidth=1e10
    )
    assert timing.new_tokens == 5 and timing.prompt_tokens == len("hello there")
    assert timing.decode_tokens_per_s > 0 and timing.prefill_tokens_per_s > 0
    assert timing.roofline_tokens_per_s == pytest.approx(1e10 / timing.bytes_per_token)
    assert timing.weight_bytes < sum(p.numel() * 4 for p in tiny.parameters())


def test_synthetic_model_refuses_what_does_not_fit(monkeypatch):
    from engine import _types, speed
    from engine.methods.registry import NotEnoughMemoryError
    from engine.sizing.catalog import catalog_model

    monkeypatch.setattr(_types, "free_memory_bytes", lambda device: 2 * 2**30)  # require_free asks it
    with pytest.raises(NotEnoughMemoryError, match=r"6\.7\d B parameters .* GiB is free on cpu"):
        speed.synthetic_model(catalog_model("llama-2-7b").config(), torch.bfloat16, "cpu")
