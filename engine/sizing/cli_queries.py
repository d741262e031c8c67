"""The CLI's questions beyond the breakdown: offload to the CPU, the best format that fits, vLLM's lines.

    python -m engine.sizing --config mixtral-8x7b-v0.1 --weights Q4_K_M --gpu "RTX 4090" --offload layers
    python -m engine.sizing --config gpt-oss-120b --gpu H100 --gpus 1 --context 32768 --best-fit --json
    python -m engine.sizing --config gpt-oss-120b --weights gpt-oss --gpu H100 --engine vllm --vllm 0.9

Each returns plain dicts (for `--json`) and the text the CLI prints; `engine.sizing.cli` parses the
arguments and chooses which to run.
"""

from __future__ import annotations

import dataclasses

from engine.sizing.bestfit import best_format, best_of, largest_batch, largest_context, verdict
from engine.sizing.engines import vllm_report
from engine.sizing.estimate import MemoryBreakdown, kv_bytes_per_token
from engine.sizing.gpus import GPU, serving_what_if
from engine.sizing.layers import layer_plan
from engine.sizing.offload import (
    EXPERTS_ON_CPU,
    HOST_MEMORY,
    LAYERS_ON_CPU,
    PCIE,
    STREAMED,
    Host,
    best_gpu_layers,
    offload_plan,
    speed_cliff,
)
from engine.sizing.parameters import ConfigError

GIB = 1024**3
OFFLOAD_MODES = {"layers": LAYERS_ON_CPU, "experts": EXPERTS_ON_CPU, "stream": STREAMED}


def _link(links, wanted: str | None, default: int):
    if not wanted:
        return links[default]
    found = [link for link in links if wanted.lower() in link.name.lower()]
    if not found:
        raise ConfigError(f"no {wanted!r} among: {'; '.join(link.name for link in links)}")
    return found[0]


def host(ram_gib: float, memory: str | None, pcie: str | None) -> Host:
    """The computer around the GPU from the CLI's words (substrings of the presets' names)."""
    return Host(ram_gib * GIB, _link(HOST_MEMORY, memory, 1).bandwidth, _link(PCIE, pcie, 1).bandwidth)


def offload(
    breakdown: MemoryBreakdown, config, device: GPU, computer: Host, mode: str, gpu_layers: int | None
) -> tuple[dict, str]:
    """The plan at `gpu_layers` (default: the most that fit) and the speed cliff, every layer count."""
    if mode not in OFFLOAD_MODES:
        raise ConfigError(f"unknown offload mode {mode!r}; choose one of {', '.join(OFFLOAD_MODES)}")
    chosen_mode = OFFLOAD_MODES[mode]
    if chosen_mode is EXPERTS_ON_CPU and not breakdown.parameters.routed_experts:
        raise ConfigError("this model has no routed experts to keep on the CPU; use --offload layers")
    cliff = speed_cliff(breakdown, config, device, computer, chosen_mode)
    layers = (
        best_gpu_layers(breakdown, config, device, computer, chosen_mode)
        if gpu_layers is None
        else gpu_layers
    )
    plan = offload_plan(breakdown, config, device, computer, layers, chosen_mode)
    rows = [
        {
            "gpu_layers": p.gpu_layers,
            "gpu_bytes": p.gpu_bytes,
            "cpu_bytes": p.cpu_bytes,
            "fits": p.fits,
            "tokens_per_s": p.tokens_per_s,
        }
        for p in cliff
    ]
    data = {
        "mode": chosen_mode.label,
        "weights": breakdown.weights_label,
        "gpu": device.name,
        "gpu_layers": plan.gpu_layers,
        "layers": plan.layers,
        "gpu_bytes": plan.gpu_bytes,
        "cpu_bytes": plan.cpu_bytes,
        "fits_gpu": plan.fits_gpu,
        "fits_ram": plan.fits_ram,
        "seconds_per_token": {"gpu": plan.gpu_seconds, "cpu": plan.cpu_seconds, "pcie": plan.pcie_seconds},
        "tokens_per_s": plan.tokens_per_s,
        "flags": plan.flags,
        "speed_cliff": rows,
    }
    step = max(1, len(cliff) // 12)
    shown = [p for p in cliff[::step]] + ([cliff[-1]] if (len(cliff) - 1) % step else [])
    cliff_text = "  ".join(f"{p.gpu_layers}:{p.tokens_per_s:,.1f}{'' if p.fits else '✗'}" for p in shown)
    text = (
        f"offload ({chosen_mode.label}), {breakdown.weights_label} on {device.name}: {plan.gpu_layers} of "
        f"{plan.layers} layers on the GPU ({plan.gpu_bytes / GIB:,.1f} GiB GPU, {plan.cpu_bytes / GIB:,.1f} GiB "
        f"RAM{'' if plan.fits else '; does not fit'}), ~{plan.tokens_per_s:,.1f} tok/s "
        f"(GPU {plan.gpu_seconds * 1e3:,.1f} ms + CPU {plan.cpu_seconds * 1e3:,.1f} ms + PCIe "
        f"{plan.pcie_seconds * 1e3:,.1f} ms per token); run with: {plan.flags}\n"
        f"speed cliff (layers on GPU: tok/s, ✗ = does not fit): {cliff_text}"
    )
    return data, text


def best_fit(
    config, device: GPU, count: int, context: int, batch: int, kv: str, **options
) -> tuple[dict, str]:
    """The format walk from 16-bit down, the best that fits, and its longest context and largest batch."""
    rows = best_format(config, device, count, context, batch, kv, **options)
    best = best_of(rows)
    data = {"gpu": device.name, "gpus": count, "verdict": verdict(rows, device, count)}
    data["formats"] = [dataclasses.asdict(row) for row in rows]
    lines = [data["verdict"]]
    for row in rows:
        mark = "*" if row.best else " "
        lines.append(
            f" {mark} {row.label:<40} {row.bits_per_weight:6.2f} bpw  {row.per_gpu_bytes / GIB:8.1f} GiB/GPU  "
            f"headroom {row.headroom_bytes / GIB:+8.1f} GiB  ~{row.tokens_per_s:,.0f} tok/s"
        )
    if best is not None:
        data["largest_context"] = largest_context(config, device, count, best.name, kv, batch, **options)
        data["largest_batch"] = largest_batch(config, device, count, best.name, kv, context, **options)
        lines.append(
            f"with {best.label}: longest context at batch {batch} {data['largest_context']:,} tokens; "
            f"largest batch at {context:,} tokens {data['largest_batch']:,}"
        )
    return data, "\n".join(lines)


def vllm_lines(breakdown: MemoryBreakdown, config, device: GPU, utilization: float) -> tuple[dict, str]:
    """What vLLM would print at start on `device` with `gpu_memory_utilization`."""
    serving = serving_what_if(breakdown, device, utilization)
    if serving.kv_capacity <= 0:
        raise ConfigError(
            f"{breakdown.weights_label} leaves no room for a KV cache at gpu_memory_utilization {utilization}"
        )
    values = kv_bytes_per_token(config, 8)
    kv_bits = 8 * breakdown.kv_bytes_per_token / values if values else 16
    report = vllm_report(layer_plan(config), serving.kv_capacity, breakdown.context, kv_bits=kv_bits)
    data = {
        "available_kv_cache_bytes": serving.kv_capacity,
        "gpu_kv_cache_tokens": report.kv_tokens,
        "max_concurrency": report.max_concurrency,
        "block_size": report.block_size,
        "kv_cache_groups": report.groups,
    }
    text = (
        f"vLLM on {device.name}, {breakdown.weights_label}, gpu_memory_utilization {utilization}:\n"
        f"  Available KV cache memory: {serving.kv_capacity / GIB:.2f} GiB\n"
        f"  GPU KV cache size: {report.kv_tokens:,} tokens\n"
        f"  Maximum concurrency for {breakdown.context:,} tokens per request: {report.max_concurrency:.2f}x"
    )
    return data, text
