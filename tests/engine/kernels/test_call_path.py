"""What one QuantLinear call costs and returns (issue 16), on the CPU: the dtype contract and the op count.

- Dtype: whatever dtype the original layer had, a packed layer returns its activations' dtype (bf16 in,
  bf16 out; fp16 -> fp16; fp32 -> fp32), for every layout and with or without a bias.
- A lean call: once bound, a forward dispatches the kernel and nothing else it can avoid: no cast of a
  stored tensor (scales are stored in the compute dtype at pack time), no finiteness check, no host read.
  Counted with engine.speed.ops, which sees every aten op a GPU would be asked to launch.
"""

from __future__ import annotations

import pytest
import torch

from engine.kernels import QuantLinear, choice, dispatch
from engine.quant.schemes import QuantScheme
from engine.speed.ops import count_ops

pytestmark = pytest.mark.usefixtures("single_thread")

INT8 = QuantScheme(8, "int", True, "channel")
PER_TOKEN = QuantScheme(8, "int", True, "channel", scale_dtype="float32")
LAYERS = {  # name -> (weights, activations, layout it lands in on a CPU)
    "W4A16 asym g64": (QuantScheme(4, "int", False, "group", 64), None, "cpu_int4pack"),
    "W4A16 sym g32": (QuantScheme(4, "int", True, "group", 32), None, "cpu_int4pack"),
    "W4A16 g16 (nibbles)": (QuantScheme(4, "int", False, "group", 16), None, "nibbles"),
    "W8A16": (INT8, None, "int8_rows"),
    "W8A8": (INT8, PER_TOKEN, "int8_rows"),
}
# launches of one bound call with activations in the model's dtype, the bias included, per kernel: a packed
# weight-only op with at most a cast in and a cast-and-bias out; W8A8 quantizes its activations per token
# (to float32, absmax, clamp, scale, divide, round, to int8, int8 GEMM, two scale products, bias, back to
# the model dtype); dequantize-then-matmul unpacks
# the weight first (shift, mask, stack, cast, offset, scale, zero, matmul).
LAUNCH_BUDGET = {"cpu_int4": 3, "cpu_int8": 3, "cpu_w8a8": 12, "dequant_matmul": 11}
DTYPES = [torch.bfloat16, torch.float16, torch.float32]


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    monkeypatch.setenv("QE_CACHE_DIR", str(tmp_path))
    choice.forget()
    dispatch.forget_failures()
    yield
    choice.forget()


def packed(name: str, dtype: torch.dtype = torch.float32, bias: bool = True) -> QuantLinear:
    weights, activations, _ = LAYERS[name]
    torch.manual_seed(0)
    linear = torch.nn.Linear(576, 192, bias=bias).to(dtype)
    return QuantLinear.from_linear(linear, weights, activations)


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    return float((y.float() - ref.float()).norm() / ref.float().norm())


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("model_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("x_dtype", DTYPES, ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_the_output_has_the_activations_dtype(name, model_dtype, x_dtype, bias):
    module = packed(name, model_dtype, bias)
    assert module.layout == LAYERS[name][2]
    for rows in (1, 5):
        x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(rows)).to(x_dtype)
        y = module(x)
        assert y.dtype == x_dtype and y.shape == (rows, 192)
        assert relative_error(y, module.reference_forward(x)) < 2e-2


def test_a_float32_layer_fed_bfloat16_returns_bfloat16():
    """The first GPU run's 36 failures: a layer packed from a float32 nn.Linear, bf16 activations."""
    module = packed("W8A16", torch.float32, bias=True)
    y = module(torch.randn(3, 576, dtype=torch.bfloat16))
    assert y.dtype == torch.bfloat16


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [1, 16])
def test_a_bound_call_launches_a_small_fixed_number_of_ops(name, dtype, rows):
    module = packed(name, dtype, bias=True)
    x = torch.randn(rows, 576).to(dtype)
    module(x)  # binds, and checks the kernel's first output (one host read, that call only)
    counts = count_ops(lambda: module(x))
    kernel = module.kernel_for(rows)
    assert counts.host_reads == 0, counts.launched()
    assert counts.launches <= LAUNCH_BUDGET[kernel], (kernel, counts.launched())
    if module.compute_dtype == dtype and kernel != "dequant_matmul":
        # activations already in the compute dtype: nothing is cast, neither them nor a stored tensor
        assert "aten._to_copy.default" not in counts.by_name or module.fmt == "W8A8", counts.launched()


@pytest.mark.parametrize("name", ["W4A16 asym g64", "W8A16"])
def test_in_the_compute_dtype_a_call_is_the_kernel_alone(name):
    module = packed(name, torch.bfloat16, bias=False)
    x = torch.randn(1, 576, dtype=torch.bfloat16)
    module(x)
    counts = count_ops(lambda: module(x))
    assert counts.launches == 1, counts.launched()


def test_scales_are_stored_once_in_the_compute_dtype():
    for name in ("W4A16 asym g64", "W8A16"):
        module = packed(name, torch.float32)
        assert module.compute_dtype == torch.bfloat16
        stored = getattr(module, "scales_and_zeros", None)
        stored = stored if stored is not None else module.scales
        assert stored.dtype == torch.bfloat16
        assert module.bias.dtype == torch.float32, "the bias stays in the model's dtype"
    assert packed("W8A8").scales.dtype == torch.float32


def test_the_first_call_checks_and_later_calls_do_not():
    module = packed("W8A16")
    x = torch.randn(2, 576)
    module.kernel_for(2)  # the choice is timed here, not counted below
    first = count_ops(lambda: module(x))
    later = count_ops(lambda: module(x))
    assert first.host_reads == 1, "the first call reads `all finite?` back once"
    assert later.host_reads == 0 and later.launches < first.launches


def test_compiled_calls_run_the_kernel_the_eager_calls_chose():
    module = packed("W8A16", torch.bfloat16, bias=True)
    x = torch.randn(1, 576, dtype=torch.bfloat16)
    eager = module(x)
    chosen = module._by_bucket[0]
    assert chosen is not None and chosen.name == module.kernel_for(1)
    torch._dynamo.reset()
    compiled = torch.compile(module, backend="eager", fullgraph=True, dynamic=False)
    assert torch.equal(compiled(x), eager)
    module(torch.randn(40, 576, dtype=torch.bfloat16))  # another bucket chosen in eager afterwards
    assert module._by_bucket[0] is chosen
    assert torch.equal(compiled(x), eager)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_tinygemm_layout_unpacks_to_the_codes_it_was_packed_from():
    from engine.kernels import cuda, reference
    from engine.quant.primitives import quantize

    torch.manual_seed(0)
    weight = torch.randn(512, 1024) * torch.linspace(0.5, 2.0, 1024)
    scheme = QuantScheme(4, "int", False, "group", 64)
    codes, scales, zeros = reference.int4_from_qtensor(quantize(weight, scheme))
    packed_weight, scales_and_zeros = cuda.tinygemm_pack(codes, scales, zeros, torch.device("cuda"))
    plain = cuda.tinygemm_unpack(packed_weight, scales_and_zeros, 64, 512, 1024)
    assert torch.equal(plain["codes"], codes)
    module = QuantLinear.from_linear(torch.nn.Linear(1024, 512).cuda().bfloat16(), scheme, layout="tinygemm")
    x = torch.randn(3, 1024, device="cuda", dtype=torch.bfloat16)
    y = module(x)
    assert y.dtype == torch.bfloat16 and module.kernel_for(3) == "tinygemm"
    assert relative_error(y.cpu(), module.reference_forward(x.cpu())) < 1e-2


def test_a_copied_layer_runs_its_own_weights_through_the_same_entries():
    import copy

    module = packed("W8A16")
    x = torch.randn(2, 576)
    module(x)
    twin = copy.deepcopy(module)
    with torch.no_grad():
        twin.qweight.neg_()
    assert twin._by_bucket[1] is module._by_bucket[1]
    assert torch.allclose(twin(x), -module(x) + 2 * module.bias, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("rows", [1, 64])
def test_on_a_gpu_the_chosen_kernel_is_the_fastest_measured(rows):
    scheme = QuantScheme(4, "int", False, "group", 128)
    module = QuantLinear.from_linear(torch.nn.Linear(4096, 4096).cuda().bfloat16(), scheme)
    name = module.kernel_for(rows)
    layouts = {r["candidate"]: r["µs"] for r in choice.measured_rows("cuda") if r["choice"] == "layout"}
    timed_layouts = {k: v for k, v in layouts.items() if v is not None}
    assert timed_layouts and module.layout == min(timed_layouts, key=timed_layouts.get), layouts
    kernels = {
        r["candidate"]: r["µs"]
        for r in choice.measured_rows("cuda")
        if r["choice"] == "kernel" and r["rows"] == choice.bucket(rows) and r["layout"] == module.layout
    }
    timed = {k: v for k, v in kernels.items() if v is not None}
    if timed:  # more than one kernel can read the chosen layout: the fastest runs
        assert name == min(timed, key=timed.get), kernels
    x = torch.randn(rows, 4096, device="cuda", dtype=torch.bfloat16)
    assert relative_error(module(x).cpu(), module.reference_forward(x.cpu())) < 1e-2
