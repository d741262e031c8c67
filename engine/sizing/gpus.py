"""Will it fit, on what, and how fast could it decode: a GPU catalog and the arithmetic over it.

The catalog is data (`assets/catalog/gpus.json`): memory as the device reports it (nvidia-smi's total,
not the marketing "80 GB"), datasheet bandwidth and bf16 FLOP/s, and the share of memory one process
may use (Apple GPUs get about 75% of unified memory by default). "This machine's RAM" is added at run
time from psutil, so the CPU path is sized too.

Tensor parallelism: weights, activations and the KV cache are split n ways, except that a model with
fewer KV heads than GPUs replicates them (each GPU keeps at least one whole KV head), and every GPU
pays its own framework overhead. Decode speed is the bandwidth roofline: bytes read per token divided
by bandwidth; real engines reach 60-90% of it and the Speed page measures the rest.

Native formats: each GPU names its architecture, and `NATIVE_FORMATS` lists the number formats that
architecture's tensor cores (matrix units) take as inputs. `native_support` says whether a weight format
runs natively there, as weight-only kernels (low-bit weights dequantized to 16-bit inside the matmul
kernel: int4, NF4, GGUF), or emulated (a float format the hardware has no type for, converted first).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.quant.microscaling import MX_SCALE_DTYPES, TWO_LEVEL_SCALE_DTYPES
from engine.quant.schemes import QuantScheme
from engine.sizing.checkpoints import CheckpointRecipe
from engine.sizing.estimate import ConfigError, MemoryBreakdown, _text_config, key_value_heads
from engine.sizing.presets import WeightPreset, weight_preset

GPU_CATALOG = Path(__file__).resolve().parents[2] / "assets" / "catalog" / "gpus.json"
TENSOR_PARALLEL_SIZES = (1, 2, 4, 8, 16, 32, 64)
MAX_SEARCH_CONTEXT = 16 * 1024 * 1024  # tokens; beyond this "largest context" reports the cap


@dataclass(frozen=True)
class GPU:
    name: str
    vendor: str
    memory_bytes: int  # what the device reports to the framework
    bandwidth: float  # bytes/s, datasheet peak
    bf16_flops: float  # dense FLOP/s, datasheet peak
    usable_fraction: float = 1.0  # share of memory_bytes one process can allocate
    source: str = ""
    architecture: str = ""  # a key of NATIVE_FORMATS: which number formats run natively

    @property
    def usable_bytes(self) -> float:
        return self.memory_bytes * self.usable_fraction


@functools.lru_cache(maxsize=1)
def gpu_catalog() -> tuple[GPU, ...]:
    data = json.loads(GPU_CATALOG.read_text())
    return tuple(
        GPU(
            name=row["name"],
            vendor=row["vendor"],
            memory_bytes=row["memory_mib"] * 1024**2,
            bandwidth=row["bandwidth_gbs"] * 1e9,
            bf16_flops=row["bf16_tflops"] * 1e12,
            usable_fraction=row.get("usable_fraction", 1.0),
            source=row.get("source", ""),
            architecture=row["architecture"],
        )
        for row in data["gpus"]
    )


def this_machine() -> GPU:
    """This computer's RAM as a device (bandwidth unknown: roughly DDR speed, left at 20 GB/s)."""
    import psutil

    return GPU(
        "This machine (CPU RAM)", "CPU", psutil.virtual_memory().total, 20e9, 1e12, 1.0, "psutil", "CPU"
    )


def all_devices() -> list[GPU]:
    return [*gpu_catalog(), this_machine()]


def gpu(name: str) -> GPU:
    """A device by exact name, else by whole words ("L4" is not "L40S"), else by substring."""
    devices, wanted = all_devices(), name.strip().lower()
    word = re.compile(rf"(?<![a-z0-9]){re.escape(wanted)}(?![a-z0-9])")
    for match in (
        lambda d: d.name.lower() == wanted,
        lambda d: word.search(d.name.lower()) is not None,
        lambda d: wanted in d.name.lower(),
    ):
        found = [d for d in devices if match(d)]
        if found:
            return found[0]
    raise ConfigError(f"unknown GPU {name!r}; choose one of: {', '.join(g.name for g in all_devices())}")


def per_gpu_bytes(breakdown: MemoryBreakdown, config, count: int) -> float:
    """Bytes each of `count` tensor-parallel GPUs holds."""
    text = _text_config(config)
    kv_heads = key_value_heads(text)
    # MLA's latent is shared by all heads, so every GPU keeps it whole; otherwise beyond kv_heads GPUs
    # the KV heads are replicated
    kv_split = 1 if getattr(text, "kv_lora_rank", None) else min(count, kv_heads)
    return (
        breakdown.weights.total / count
        + breakdown.kv_cache / kv_split
        + breakdown.activations.peak / count
        + breakdown.overhead
    )


def fits(breakdown: MemoryBreakdown, config, device: GPU, count: int = 1) -> bool:
    return per_gpu_bytes(breakdown, config, count) <= device.usable_bytes


def min_tensor_parallel(breakdown: MemoryBreakdown, config, device: GPU) -> int | None:
    """Fewest GPUs (a power of two dividing the attention heads) that hold the model; None if > 64
    (or, for Apple and CPU devices, if one does not hold it)."""
    heads = getattr(_text_config(config), "num_attention_heads", 1) or 1
    sizes = TENSOR_PARALLEL_SIZES if device.vendor == "NVIDIA" else (1,)  # one Mac, one CPU: no TP
    for count in sizes:
        if count > 1 and heads % count:
            continue
        if fits(breakdown, config, device, count):
            return count
    return None


def largest_fitting(make: Callable[[int], MemoryBreakdown], config, device: GPU, count: int = 1) -> int:
    """Largest n in [1, MAX_SEARCH_CONTEXT] with make(n) fitting (memory grows with n); 0 if n=1 does not."""
    if not fits(make(1), config, device, count):
        return 0
    low, high = 1, 2
    while high <= MAX_SEARCH_CONTEXT and fits(make(high), config, device, count):
        low, high = high, high * 2
    if high > MAX_SEARCH_CONTEXT:
        return MAX_SEARCH_CONTEXT
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(make(middle), config, device, count) else (low, middle)
    return low


@dataclass(frozen=True)
class DecodeEstimate:
    bytes_per_step: float  # weights visited + KV cache read for one decode step of the whole batch
    seconds_per_step: float  # at datasheet bandwidth
    tokens_per_s: float  # per sequence
    batch_tokens_per_s: float  # whole batch


def decode_estimate(breakdown: MemoryBreakdown, device: GPU, count: int = 1) -> DecodeEstimate:
    """Bandwidth roofline for one decode step (batch 1 decode is matrix-vector: memory-bound)."""
    read = breakdown.decode_bytes_per_token() / count
    seconds = read / device.bandwidth
    return DecodeEstimate(read * count, seconds, 1 / seconds, breakdown.batch / seconds)


@dataclass(frozen=True)
class ServingWhatIf:
    reserved: float  # what the engine grabs up front: utilization x device memory
    kv_capacity: float  # bytes left for the KV cache after weights, activations and overhead
    kv_tokens: int  # tokens that fit in that cache
    concurrent_sequences: float  # kv_tokens / context


def serving_what_if(
    breakdown: MemoryBreakdown, device: GPU, utilization: float = 0.9, count: int = 1
) -> ServingWhatIf:
    """vLLM-style pre-allocation: the engine reserves `utilization` of the GPU and fills the rest of it
    (after weights, activation peak and overhead) with KV-cache blocks."""
    if not 0 < utilization <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1] (got {utilization})")
    reserved = utilization * device.usable_bytes * count
    capacity = max(
        0.0,
        reserved - breakdown.weights.total - breakdown.activations.peak - breakdown.overhead * count,
    )
    per_token = breakdown.kv_cache / (breakdown.batch * breakdown.context)
    tokens = int(capacity // per_token) if per_token else 0
    return ServingWhatIf(reserved, capacity, tokens, tokens / breakdown.context)


# Tensor-core input formats: "16/32-bit" (fp16/bf16, and fp32 or TF32), "int8", "fp8" (e4m3 and e5m2),
# plain "fp6"/"fp4" elements (E2M3/E3M2, E2M1), OCP microscaling "mxfp8"/"mxfp6"/"mxfp4" (E8M0 scale per
# 32) and "nvfp4" (E4M3 scale per 16). int4 tensor cores (Turing, Ampere) are left out: int4 weights run
# against 16-bit activations, so kernels dequantize them anyway.
_WIDE = frozenset({"16/32-bit"})
_INT8 = _WIDE | {"int8"}
_FP8 = _INT8 | {"fp8"}
_APPLE = _WIDE  # Metal's simdgroup matrices take half / float (bfloat on M3+): no int8, FP8 or FP4 type
NATIVE_FORMATS: dict[str, frozenset[str]] = {
    # Turing whitepaper (2018): 2nd-gen tensor cores, FP16, INT8 and INT4 (no bf16); PTX mma .s8 from sm_75
    "Turing": _INT8,
    # NVIDIA A100 (GA100) and GA102 whitepapers: 3rd-gen tensor cores, FP16, BF16, TF32, INT8, INT4; no FP8
    "Ampere": _INT8,
    # Ada Lovelace (AD102) whitepaper: 4th-gen tensor cores add FP8 E4M3/E5M2; PTX ISA mma .e4m3/.e5m2, sm_89
    "Ada": _FP8,
    # H100 (Hopper) whitepaper: FP8 E4M3/E5M2 Transformer Engine; PTX ISA wgmma .e4m3/.e5m2, sm_90a
    "Hopper": _FP8,
    # Blackwell whitepaper; PTX ISA 8.7+: tcgen05.mma kind::f8f6f4 / mxf8f6f4 / mxf4nvf4 (sm_100a, B200)
    # and mma.sync kind::f8f6f4 / mxf8f6f4 / mxf4nvf4 (sm_120a, RTX 50xx): FP6, FP4, MX block scales, NVFP4
    "Blackwell": _FP8 | {"fp6", "fp4", "mxfp8", "mxfp6", "mxfp4", "nvfp4"},
    "Apple M2": _APPLE,  # Apple Metal Shading Language spec: simdgroup_matrix<half|float>
    "Apple M3": _APPLE,  # Metal 3.1 adds bfloat
    "Apple M4": _APPLE,
    # PyTorch CPU: fp32 / bf16 GEMMs, int8 through fbgemm / oneDNN (VNNI, AMX); FP8 and FP4 are converted
    "CPU": _INT8,
}
# Not in the catalog, so not listed: AMD CDNA3 (MI300X) runs FP8 (the FNUZ variants) and int8; CDNA4
# (MI355X) adds OCP FP8, MXFP8, MXFP6 and MXFP4 (AMD CDNA3 / CDNA4 architecture whitepapers).

NATIVE, WEIGHT_ONLY, EMULATED = "native", "weight-only (dequantized in the kernel)", "emulated"


@functools.singledispatch
def tensor_core_format(weights) -> str | None:
    """The tensor-core input type a weight format needs to run natively, a key of NATIVE_FORMATS' sets;
    None for formats that every GPU runs through weight-only kernels (int2-int7, NF4, GGUF blocks)."""
    raise TypeError(
        f"no number format for {type(weights).__name__}; pass a WeightPreset, QuantScheme or name"
    )


@tensor_core_format.register
def _(weights: QuantScheme) -> str | None:
    family, bits = weights.element.family, weights.bits
    if family == "float":
        if weights.scale_dtype in TWO_LEVEL_SCALE_DTYPES and bits == 4:
            return "nvfp4"
        if weights.scale_dtype in MX_SCALE_DTYPES:
            return f"mxfp{bits}"
        return f"fp{bits}"
    if family == "int" and bits == 8:
        return "int8"
    return None  # int below 8 bits, codebooks (NF4, bitsandbytes FP4)


@tensor_core_format.register
def _(weights: WeightPreset) -> str | None:
    if weights.scheme is not None:
        return tensor_core_format(weights.scheme)
    return "16/32-bit" if weights.linear_bits >= 16 else None  # GGUF blocks: llama.cpp dequantizes


@tensor_core_format.register
def _(weights: CheckpointRecipe) -> str | None:  # the format of the biggest part: experts, else the MLP
    formats = dict(weights.formats)
    main = formats.get("routed_experts") or formats.get("dense_mlp") or weights.default
    return tensor_core_format(main)


@tensor_core_format.register
def _(weights: str) -> str | None:
    return tensor_core_format(weight_preset(weights))


def native_support(device: GPU, weights: WeightPreset | QuantScheme | str) -> str:
    """Whether `device` runs `weights` natively on its tensor cores, with weight-only kernels, or emulated."""
    needed = tensor_core_format(weights)
    if needed is not None and needed in NATIVE_FORMATS.get(device.architecture, _WIDE):
        return NATIVE
    # integer weights without int8 units (Apple) run like int4: dequantized inside the matmul kernel
    return WEIGHT_ONLY if needed in (None, "int8") else EMULATED
