"""Ahead-of-time builds of our Triton kernels for a GPU this machine does not have (an H100: sm_90a).

Triton compiles to PTX and a cubin without a device: its wheel carries ptxas and cuobjdump. Building each
kernel with each config the autotuner may pick, with the specialization a real launch gets (16-byte
aligned tensors, sizes and strides divisible by 16), catches on a CPU-only machine what Triton's
interpreter cannot: code that does not compile for the GPU, and register pressure that spills to local
memory, which would sink a memory-bound GEMV. `cuobjdump -res-usage` reads registers per thread, shared
memory and local (spilled) bytes from the cubin, exactly as the GPU would load it. Speed is not known
until a GPU runs them (bench/gpu_run.sh).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from engine.kernels import cuda
from engine.kernels import triton_kernels as tk

H100 = 90  # compute capability 9.0 (Triton builds sm_90a)
TRITON_DTYPES = ("bf16", "fp16")
POINTER_TYPES = {"w_ptr": {"w4a16": "*u8", "w8a16": "*i8"}}


@dataclass(frozen=True)
class Build:
    kernel: str
    dtype: str
    config: str  # the constexprs and launch options, as the table shows them
    registers: int  # per thread
    shared_bytes: int  # static shared memory
    local_bytes: int  # spilled registers (and stack): 0 for a healthy kernel
    ptx_lines: int


def _signature(fn, kernel: str, dtype: str, constexprs: dict) -> dict[str, str]:
    family = kernel.split("_")[0]  # w4a16 / w8a16
    signature = {}
    for name in fn.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name == "w_ptr":
            signature[name] = POINTER_TYPES["w_ptr"][family]
        elif name.endswith("_ptr"):
            signature[name] = f"*{dtype}"
        else:
            signature[name] = "i32"
    return signature


def _resource_usage(cubin: bytes) -> dict[str, int]:
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        text = subprocess.run(
            [str(cuobjdump), "-res-usage", handle.name], capture_output=True, text=True, check=True
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", text)
    if found is None:
        raise RuntimeError(f"cuobjdump printed no resource usage:\n{text}")
    registers, stack, shared, local = map(int, found.groups())
    return {"registers": registers, "shared": shared, "local": local + stack}


def build(
    kernel: str, dtype: str, constexprs: dict, num_warps: int = 4, num_stages: int = 3, arch: int = H100
) -> Build:
    """Compile `kernel` (a name in engine.kernels.triton_kernels) for sm_`arch` with 16-bit `dtype`."""
    fn = getattr(tk, kernel)
    signature = _signature(fn, kernel, dtype, constexprs)
    aligned = {
        (i,): [["tt.divisibility", 16]] for i, name in enumerate(fn.arg_names) if name not in constexprs
    }
    source = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(
        source, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps, "num_stages": num_stages}
    )
    usage = _resource_usage(compiled.asm["cubin"])
    shown = ", ".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items())
    return Build(
        kernel,
        dtype,
        f"{shown}, warps={num_warps}, stages={num_stages}",
        usage["registers"],
        usage["shared"],
        usage["local"],
        compiled.asm["ptx"].count("\n"),
    )


def planned_builds(dtypes: tuple[str, ...] = TRITON_DTYPES, every_config_dtypes: tuple[str, ...] = ("bf16",)):
    """(kernel, dtype, constexprs, num_warps, num_stages) of every build a GPU may run: each autotuned
    decode-GEMV config (in `every_config_dtypes`; the first config in every dtype) at group 128 (Llama-2-7B:
    K = 4096 walks 2 groups a step), the int4 GEMV's other group sizes, and the GEMMs at their one config."""
    plans = []
    for dtype in dtypes:
        w4_configs = cuda.W4A16_GEMV_CONFIGS if dtype in every_config_dtypes else cuda.W4A16_GEMV_CONFIGS[:1]
        for block_n, warps, stages in w4_configs:
            constexprs = {"GROUP": 128, "GROUPS_PER_BLOCK": 2, "HAS_ZERO": True, "BLOCK_N": block_n}
            plans.append(("w4a16_gemv_kernel", dtype, constexprs, warps, stages))
        block_n, warps, stages = cuda.W4A16_GEMV_CONFIGS[0]
        for group, per_block in ((32, 4), (64, 4)):
            constexprs = {
                "GROUP": group,
                "GROUPS_PER_BLOCK": per_block,
                "HAS_ZERO": False,
                "BLOCK_N": block_n,
            }
            plans.append(("w4a16_gemv_kernel", dtype, constexprs, warps, stages))
        w8_configs = cuda.W8A16_GEMV_CONFIGS if dtype in every_config_dtypes else cuda.W8A16_GEMV_CONFIGS[:1]
        for block_n, block_k, warps in w8_configs:
            plans.append(("w8a16_gemv_kernel", dtype, {"BLOCK_N": block_n, "BLOCK_K": block_k}, warps, 3))
        tiles = {"BLOCK_M": cuda.GEMM_BLOCK_M, "BLOCK_N": cuda.GEMM_BLOCK_N}
        for group in (32, 128):
            plans.append(("w4a16_gemm_kernel", dtype, {"GROUP": group, "HAS_ZERO": True, **tiles}, 4, 3))
        plans.append(("w8a16_gemm_kernel", dtype, {**tiles, "BLOCK_K": 64}, 4, 3))
    return plans
