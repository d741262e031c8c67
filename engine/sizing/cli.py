"""`python -m engine.sizing`: the Memory page's breakdown in a terminal, shaped like
`accelerate estimate-memory`.

    python -m engine.sizing --config llama-3.1-8b --weights bf16,int4-g128 --kv int8 --context 32768 --batch 4
    python -m engine.sizing --config llama-3.1-8b --weights Q4_K_M --kv fp8 --kv-values int4
    python -m engine.sizing --config gpt-oss-120b --weights gpt-oss,mxfp4 --engine vllm --gpu H100 --vllm 0.9
    python -m engine.sizing --config mixtral-8x7b-v0.1 --weights Q4_K_M --gpu "RTX 4090" --offload experts
    python -m engine.sizing --config qwen3-32b --gpu "L40S" --gpus 2 --context 32768 --best-fit --json

`--weights` takes formats and checkpoint layouts (gpt-oss, deepseek-fp8, nvfp4-modelopt, gguf-q4_k_m).
With `--offload`, `--best-fit` or `--vllm` (each needs `--gpu`), `--json` prints an object: the estimates
under "estimates" and each answer under its own key; without them, the list of estimates as before.
"""

from __future__ import annotations

import argparse
import json
import sys

from engine.sizing import cli_queries
from engine.sizing.checkpoints import CHECKPOINT_RECIPES
from engine.sizing.cli_queries import OFFLOAD_MODES
from engine.sizing.engines import ENGINES
from engine.sizing.estimate import KV_FORMATS, ConfigError, estimate
from engine.sizing.gpus import all_devices, decode_estimate, fits, gpu, min_tensor_parallel
from engine.sizing.presets import PRESETS

GIB = 1024**3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine.sizing",
        description="Estimate the memory of serving a model from its config alone (no weights are read).",
    )
    parser.add_argument(
        "--config", required=True, help="catalog name (e.g. llama-3.1-8b), config.json path, folder or Hub id"
    )
    parser.add_argument(
        "--weights", default="bf16", help=f"comma-separated: {', '.join(PRESETS)} or a scheme label"
    )
    parser.add_argument(
        "--kv", default="fp16", help=f"KV-cache format: {', '.join(KV_FORMATS)} (or 16/8/4/3/2)"
    )
    parser.add_argument(
        "--kv-values",
        default=None,
        help="the V cache's format when it differs from the keys' (default: --kv)",
    )
    parser.add_argument("--context", type=int, default=4096, help="tokens per sequence (prompt + output)")
    parser.add_argument("--batch", type=int, default=1, help="sequences served at once")
    parser.add_argument(
        "--attention", choices=("sdpa", "eager"), default="sdpa", help="eager keeps the score matrix"
    )
    parser.add_argument(
        "--prefill-chunk", type=int, default=None, help="tokens per prefill forward (default: whole prompt)"
    )
    parser.add_argument(
        "--engine",
        default="transformers",
        choices=list(ENGINES),
        help="how the KV cache and recurrent state are allocated (windows, blocks, state precision)",
    )
    parser.add_argument("--gpu", default=None, help="only this GPU in the fit table (substring of its name)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs for tensor parallelism in --best-fit")
    parser.add_argument(
        "--offload",
        choices=list(OFFLOAD_MODES),
        default=None,
        help="layers: llama.cpp -ngl (CPU layers computed from RAM); experts: routed experts on the CPU "
        "(--n-cpu-moe); stream: accelerate's CPU offload, weights copied over PCIe every token",
    )
    parser.add_argument(
        "--gpu-layers", type=int, default=None, help="layers on the GPU (default: most that fit)"
    )
    parser.add_argument("--ram", type=float, default=64.0, help="host RAM in GiB for --offload")
    parser.add_argument(
        "--host-memory", default=None, help="host memory preset, e.g. DDR4, 'DDR5-5600', '8 channels'"
    )
    parser.add_argument("--pcie", default=None, help="PCIe preset, e.g. 'PCIe 3.0', 'PCIe 5.0'")
    parser.add_argument("--best-fit", action="store_true", help="the best format that fits --gpus x --gpu")
    parser.add_argument(
        "--vllm",
        type=float,
        default=None,
        metavar="UTIL",
        help="vLLM's start-up lines at this gpu_memory_utilization",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _gib(value: float) -> str:
    return f"{value / GIB:,.2f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    line = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    out = [line, "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |", line]
    out += [
        "| " + " | ".join(str(c).rjust(w) for c, w in zip(row, widths, strict=True)) + " |" for row in rows
    ]
    return "\n".join([*out, line])


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from engine.sizing.configs import load_config

    try:
        config = load_config(args.config)
        breakdowns = [
            estimate(
                config,
                CHECKPOINT_RECIPES.get(w.strip().lower(), w.strip()),
                args.kv,
                args.context,
                args.batch,
                attention=args.attention,
                prefill_chunk=args.prefill_chunk,
                kv_values=args.kv_values,
                engine=args.engine,
            )
            for w in args.weights.split(",")
        ]
        devices = [gpu(args.gpu)] if args.gpu else all_devices()
        answers = _queries(args, config, breakdowns, devices[0])
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        estimates = [_as_dict(b) for b in breakdowns]
        payload = (
            {"estimates": estimates} | {k: data for k, (data, _) in answers.items()} if answers else estimates
        )
        print(json.dumps(payload, indent=2))
        return 0
    first = breakdowns[0]
    params = first.parameters
    active = (
        f"; {params.active / 1e9:.2f} B active per token "
        f"({params.active_without_input_embedding / 1e9:.2f} B without the input embedding)"
        if params.experts
        else ""
    )
    print(f"{args.config}: {params.total / 1e9:.3f} B parameters{active}")
    print(
        f"context {args.context:,} tokens x batch {args.batch}; {first.kv_label}; "
        f"KV {first.kv_bytes_per_token:,.0f} bytes/token at full attention; {first.engine}"
        + (f"; recurrent state {first.state / 1024**2:,.1f} MiB" if first.state else "")
        + "\n"
    )
    rows = [
        [
            b.weights_label,
            f"{b.weights.bits_per_weight:.3f}",
            _gib(b.weights.total),
            _gib(b.kv_cache),
            _gib(b.activations.peak),
            _gib(b.overhead),
            _gib(b.total),
        ]
        for b in breakdowns
    ]
    print(
        _table(
            [
                "weights",
                "bits/weight",
                "weights GiB",
                "KV GiB",
                "activations GiB",
                "overhead GiB",
                "total GiB",
            ],
            rows,
        )
    )
    fit_rows = []
    for device in devices:
        row = [device.name, _gib(device.usable_bytes)]
        for b in breakdowns:
            single = "yes" if fits(b, config, device) else "no"
            needed = min_tensor_parallel(b, config, device)
            speed = decode_estimate(b, device, needed or 1).tokens_per_s
            where = "no" if needed is None else f"{needed} GPU"
            row.append(f"{single}, {where}, ~{speed:,.0f} tok/s")
        fit_rows.append(row)
    print()
    print(
        _table(
            [
                "device",
                "usable GiB",
                *[f"{b.weights_label}: fits 1 / TP needed / decode" for b in breakdowns],
            ],
            fit_rows,
        )
    )
    for _, text in answers.values():
        print()
        print(text)
    for note in first.notes:
        print(f"note: {note}")
    print(
        "note: decode tok/s is the bandwidth roofline (bytes per token / datasheet bandwidth); expect 60-90%."
    )
    return 0


def _queries(args, config, breakdowns, device) -> dict[str, tuple[dict, str]]:
    """The answers asked for (offload, best fit, vLLM's lines), keyed as in the JSON."""
    asked = args.offload or args.best_fit or args.vllm is not None
    if not asked:
        return {}
    if not args.gpu:
        raise ConfigError("--offload, --best-fit and --vllm need --gpu (which GPU to answer for)")
    answers = {}
    if args.offload:
        computer = cli_queries.host(args.ram, args.host_memory, args.pcie)
        answers["offload"] = cli_queries.offload(
            breakdowns[0], config, device, computer, args.offload, args.gpu_layers
        )
    if args.best_fit:
        options = dict(
            attention=args.attention,
            prefill_chunk=args.prefill_chunk,
            kv_values=args.kv_values,
            engine=args.engine,
        )
        answers["best_fit"] = cli_queries.best_fit(
            config, device, args.gpus, args.context, args.batch, args.kv, **options
        )
    if args.vllm is not None:
        answers["vllm"] = cli_queries.vllm_lines(breakdowns[0], config, device, args.vllm)
    return answers


def _as_dict(b) -> dict:
    return {
        "weights": b.weights_label,
        "bits_per_weight": b.weights.bits_per_weight,
        "parameters": b.parameters.total,
        "active_parameters": b.parameters.active,
        "active_parameters_without_input_embedding": b.parameters.active_without_input_embedding,
        "weights_bytes": b.weights.total,
        "kv_cache_bytes": b.kv_cache,
        "kv": b.kv_label,
        "kv_bytes_per_token": b.kv_bytes_per_token,
        "state_bytes": b.state,
        "engine": b.engine,
        "activation_bytes": b.activations.peak,
        "overhead_bytes": b.overhead,
        "total_bytes": b.total,
        "context": b.context,
        "batch": b.batch,
        "notes": list(b.notes),
    }
