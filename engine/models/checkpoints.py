"""Checkpoints that are already quantized: GPTQ and AWQ folders (AutoGPTQ / AutoAWQ layouts).

transformers 5 loads them itself when `config.json` has a `quantization_config`, through optimum and
gptqmodel (the maintained successor of AutoGPTQ and AutoAWQ, pinned at 7.6.0). This module says what a
folder holds, checks the backends are installed before a load is tried (a clear message instead of an
ImportError deep inside transformers), keeps gptqmodel's import from changing this process's
environment, and unpacks such checkpoints with our own code (`engine.models.export`'s packing, inverted), so the
page can show the integer codes and the tests can check gptqmodel's kernels against them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from engine.models.export import AWQ_ORDER, unpack_cols, unpack_rows

BACKENDS = {  # quant_method -> packages transformers needs to load it
    "gptq": ("optimum", "gptqmodel"),
    "awq": ("gptqmodel",),
}
INSTALL_HINT = "pip install optimum==2.3.0 && pip install --no-deps gptqmodel==7.6.0 (see requirements*.txt)"


class CheckpointError(ValueError):
    """A quantized checkpoint that cannot be read here; the message says why."""


@dataclass(frozen=True)
class CheckpointQuantization:
    method: str  # gptq | awq | bitsandbytes | fp8 | ...
    bits: int | None
    group_size: int | None  # -1 or None: per channel
    symmetric: bool | None
    layout: str  # checkpoint_format (gptq, gptq_v2) or AWQ version (gemm)
    act_order: bool = False

    @property
    def label(self) -> str:
        parts = [self.method.upper()]
        if self.bits:
            parts.append(f"int{self.bits}")
        if self.group_size and self.group_size > 0:
            parts.append(f"g{self.group_size}")
        elif self.bits:
            parts.append("per channel")
        if self.symmetric is not None:
            parts.append("sym" if self.symmetric else "asym")
        if self.act_order:
            parts.append("act-order")
        return " ".join(parts) + f" ({self.layout} layout)"


def checkpoint_quantization(config) -> CheckpointQuantization | None:
    """What a config's `quantization_config` says (a dict or a transformers config object), or None."""
    raw = (
        config.get("quantization_config")
        if isinstance(config, dict)
        else getattr(config, "quantization_config", None)
    )
    if raw is None:
        return None
    q = raw if isinstance(raw, dict) else raw.to_dict()
    method = str(q.get("quant_method", "unknown")).lower()
    if method == "gptq":
        layout = str(q.get("checkpoint_format") or q.get("format") or "gptq")
        symmetric = q.get("sym")
    elif method == "awq":
        layout = str(q.get("version") or q.get("format") or "gemm")
        symmetric = not q.get("zero_point", True)
    else:
        layout, symmetric = method, None
    bits = q.get("bits") or q.get("w_bit")
    group = q.get("group_size") or q.get("q_group_size")
    return CheckpointQuantization(
        method,
        int(bits) if bits else None,
        int(group) if group else None,
        symmetric,
        layout,
        bool(q.get("desc_act", False)),
    )


def missing_backends(method: str) -> list[str]:
    return [name for name in BACKENDS.get(method, ()) if importlib.util.find_spec(name) is None]


def check_loadable(quantization: CheckpointQuantization | None) -> None:
    """Raise a CheckpointError naming what is missing before transformers fails on an import."""
    if quantization is None or quantization.method not in BACKENDS:
        return
    missing = missing_backends(quantization.method)
    if missing:
        raise CheckpointError(
            f"This folder is a {quantization.label} checkpoint. Loading it needs {', '.join(missing)} "
            f"(transformers' {quantization.method.upper()} backend), which is not installed: {INSTALL_HINT}."
        )
    if quantization.method == "awq" and quantization.layout not in ("gemm", "gemv", "gemv_fast"):
        raise CheckpointError(f"AWQ layout {quantization.layout!r} is not supported here (gemm or gemv).")


@contextmanager
def preserved_environment() -> Iterator[None]:
    """Undo environment changes made while loading: gptqmodel's import sets CUDA_DEVICE_ORDER,
    PYTORCH_ALLOC_CONF and others process-wide, which other sessions of the app must not inherit."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


# -- our own reader ---------------------------------------------------------------------------------------


def dequantize_gptq(tensors: dict[str, Tensor], bits: int, v1: bool = True) -> Tensor:
    """(out, in) float32 weight of one GPTQ linear: (q - z) * s with z stored minus one in v1."""
    codes = unpack_rows(tensors["qweight"], bits)  # (in, out)
    zeros = unpack_cols(tensors["qzeros"], bits) + (1 if v1 else 0)  # (groups, out)
    zeros = zeros[:, : codes.shape[1]]
    scales = tensors["scales"].float()  # (groups, out)
    return _dequantize(codes, zeros, scales, tensors.get("g_idx"))


def dequantize_awq(tensors: dict[str, Tensor]) -> Tensor:
    """(out, in) float32 weight of one AWQ GEMM linear (4-bit, interleaved packing along outputs)."""
    codes = unpack_cols(tensors["qweight"], 4, AWQ_ORDER)  # (in, out)
    zeros = unpack_cols(tensors["qzeros"], 4, AWQ_ORDER)  # (groups, out)
    return _dequantize(codes, zeros, tensors["scales"].float(), None)


def _dequantize(codes: Tensor, zeros: Tensor, scales: Tensor, g_idx: Tensor | None) -> Tensor:
    """(out, in) float32 weight from (in, out) codes and (groups, out) zeros / scales; g_idx: each
    input's group, None for consecutive groups."""
    if g_idx is None:
        g_idx = torch.arange(codes.shape[0]) // (codes.shape[0] // scales.shape[0])
    g_idx = g_idx.to(torch.int64)
    return ((codes - zeros[g_idx]) * scales[g_idx]).T.contiguous().float()


def read_quantized_linears(folder: str | Path) -> tuple[CheckpointQuantization, dict[str, Tensor]]:
    """{linear name: dequantized (out, in) float32 weight} from a GPTQ or AWQ folder, without gptqmodel."""
    from safetensors import safe_open

    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    quantization = checkpoint_quantization(config)
    if quantization is None or quantization.method not in ("gptq", "awq"):
        raise CheckpointError(f"{folder} is not a GPTQ or AWQ checkpoint")
    if quantization.method == "awq" and quantization.layout != "gemm":
        raise CheckpointError(f"only AWQ's GEMM layout is unpacked here (this one is {quantization.layout})")
    grouped: dict[str, dict[str, Tensor]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():  # noqa: SIM118  (safe_open is not iterable)
                owner, _, leaf = key.rpartition(".")
                if leaf in ("qweight", "qzeros", "scales", "g_idx"):
                    grouped.setdefault(owner, {})[leaf] = handle.get_tensor(key)
    if not grouped:
        raise CheckpointError(f"{folder}: no qweight tensors in its safetensors files")
    if quantization.method == "gptq":
        bits = quantization.bits or 4
        v1 = quantization.layout == "gptq"
        weights = {name: dequantize_gptq(t, bits, v1) for name, t in grouped.items()}
    else:
        weights = {name: dequantize_awq(t) for name, t in grouped.items()}
    return quantization, weights
