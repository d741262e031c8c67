"""Our Triton kernels compiled ahead of time for an H100 (sm_90a), without a GPU: registers per thread,
shared memory and spilled bytes of every build the GPU may run, as markdown for docs/benchmarks.md.

Run: .venv/bin/python -m bench.bench_triton_compile [--arch 90]. Static facts of the cubin, not speed.
"""

from __future__ import annotations

import argparse
import warnings

import triton

from engine.kernels import triton_aot


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", type=int, default=triton_aot.H100, help="compute capability x 10")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    print(f"# Triton kernels built for sm_{args.arch}a — `python -m bench.bench_triton_compile`\n")
    print(f"Triton {triton.__version__}, compiled on a machine without a GPU.\n")
    print("| kernel | dtype | config | registers / thread | shared bytes | spilled bytes | PTX lines |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for plan in triton_aot.planned_builds():
        built = triton_aot.build(*plan, arch=args.arch)
        print(
            f"| {built.kernel} | {built.dtype} | {built.config} | {built.registers} | {built.shared_bytes:,} | "
            f"{built.local_bytes} | {built.ptx_lines:,} |"
        )


if __name__ == "__main__":
    main()
