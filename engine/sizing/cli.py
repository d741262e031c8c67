"""`python -m engine.sizing`: the Memory page's breakdown in a terminal, shaped like
`accelerate estimate-memory`.

    python -m engine.sizing --config llama-3.1-8b --weights bf16,int4-g128 --kv int8 --context 32768 --batch 4
    python -m engine.sizing --config llama-3.1-8b --weights Q4_K_M --kv fp8 --kv-values int4
"""

from __future__ import annotations

import argparse
import json
import sys

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
                w.strip(),
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
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([_as_dict(b) for b in breakdowns], indent=2))
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
    for note in first.notes:
        print(f"note: {note}")
    print(
        "note: decode tok/s is the bandwidth roofline (bytes per token / datasheet bandwidth); expect 60-90%."
    )
    return 0


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
