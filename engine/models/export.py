"""Saving a quantized model in a format other tools load: GPTQ, AWQ, bitsandbytes, or dequantized.

Our methods leave `FakeQuantLinear`s whose weights are already on the grid and which keep the scale and
zero point they were quantized with, so the integer codes come back exactly: q = round(w / s) + z. Those
codes are packed in the two layouts the community's checkpoints use, and transformers 5 loads them back
through optimum + gptqmodel (the backends that replaced AutoGPTQ / AutoAWQ):

- "gptq" (AutoGPTQ's layout): per linear `qweight` int32 (in / 32*bits, out), the codes of 32/bits
  consecutive *input* rows in one word, low bits first; `qzeros` int32 (groups, out / 32*bits), packed
  along the outputs, storing zero - 1 (the v1 convention every AutoGPTQ checkpoint uses; a group whose zero
  is 0 cannot be written that way, and then the v2 layout stores zeros as they are); `scales` float16
  (groups, out); `g_idx` int32 (in,), each input's group (not in order after act-order). Symmetric grids are
  stored unsigned with zero 2^(bits-1): our int4 [-7, 7] becomes codes [1, 15] around 8.
- "awq" (AutoAWQ's GEMM layout, 4-bit groups): `qweight` int32 (in, out / 8) packed along the *outputs*
  in the interleaved order 0, 2, 4, 6, 1, 3, 5, 7; `qzeros` int32 (groups, out / 8) likewise, zeros as
  they are; `scales` float16 (groups, out). AWQ's folded scales are already inside the norms and weights,
  so any int4 group model (RTN, GPTQ without act-order, AWQ) can be written this way.
- "bnb": bitsandbytes layers saved by transformers' own `save_pretrained`.
- "dequantized": the fake-quantized weights as float16 safetensors with the original config: any tool
  loads it and gets the quantized model's weights, but nothing is smaller and activation quantization
  (W8A8, SmoothQuant, LLM.int8's per-call outlier split) is not part of a weight file.
- "gguf" / "gguf_f16": one .gguf file for llama.cpp (engine/models/gguf_export.py): the GGUF method's
  block types packed in ggml's layouts, or any llama model's weights as F16. These need the model's
  `QuantizedModel` (its per-tensor types) and a `GGUFSource` (the reference model and its folder).

Scales are stored in float16 (as both layouts require): our default scale dtype is float16 already, so
the round trip is exact; schemes with float32 or bfloat16 scales lose their last bits here.
"""

from __future__ import annotations

import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from engine._types import Progress
from engine.models.export_types import GGUF_FORMATS, ExportError
from engine.quant.linear import FakeQuantLinear
from engine.quant.schemes import QuantScheme

if TYPE_CHECKING:  # engine.methods imports every method; export is imported by checkpoint loading
    from engine.methods.registry import QuantizedModel

FORMATS = {
    "gptq": "GPTQ checkpoint (AutoGPTQ layout; loads in transformers with optimum + gptqmodel)",
    "awq": "AWQ checkpoint (AutoAWQ GEMM layout; loads in transformers with gptqmodel)",
    "bnb": "bitsandbytes (transformers save_pretrained)",
    "dequantized": "dequantized float16 safetensors (loads anywhere; no size saving)",
    "gguf": "GGUF file for llama.cpp (the GGUF method's block types)",
    "gguf_f16": "GGUF file for llama.cpp, weights in float16 (no size saving)",
}
AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)  # AutoAWQ's GEMM interleave: nibble k holds column AWQ_ORDER[k]


@dataclass(frozen=True)
class ExportResult:
    folder: Path
    format: str
    files: dict[str, int]  # file name -> bytes
    seconds: float

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())


# -- packing -----------------------------------------------------------------------------------------------


def _to_int32(words: Tensor) -> Tensor:
    """int64 words in [0, 2^32) as the int32 with the same bits (checkpoints store signed int32)."""
    return torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)


def pack_rows(codes: Tensor, bits: int) -> Tensor:
    """(rows, cols) unsigned codes -> int32 (rows * bits / 32, cols): 32/bits consecutive rows per word."""
    per_word = 32 // bits
    rows, cols = codes.shape
    if rows % per_word:
        raise ExportError(f"{rows} rows cannot be packed {per_word} to a 32-bit word")
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits).view(1, per_word, 1)
    words = (codes.to(torch.int64).view(rows // per_word, per_word, cols) << shifts).sum(dim=1)
    return _to_int32(words)


def unpack_rows(words: Tensor, bits: int) -> Tensor:
    """Inverse of pack_rows: int32 (rows * bits / 32, cols) -> int64 codes (rows, cols)."""
    per_word = 32 // bits
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits).view(1, per_word, 1)
    codes = (words.to(torch.int64).unsqueeze(1) >> shifts) & (2**bits - 1)
    return codes.reshape(-1, words.shape[1])


def pack_cols(codes: Tensor, bits: int, order: tuple[int, ...] | None = None) -> Tensor:
    """(rows, cols) unsigned codes -> int32 (rows, cols * bits / 32); `order[k]`: column in nibble k."""
    per_word = 32 // bits
    rows, cols = codes.shape
    if cols % per_word:
        raise ExportError(f"{cols} columns cannot be packed {per_word} to a 32-bit word")
    blocks = codes.to(torch.int64).view(rows, cols // per_word, per_word)
    if order is not None:
        blocks = blocks[:, :, list(order)]
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits).view(1, 1, per_word)
    return _to_int32((blocks << shifts).sum(dim=2))


def unpack_cols(words: Tensor, bits: int, order: tuple[int, ...] | None = None) -> Tensor:
    per_word = 32 // bits
    shifts = (torch.arange(per_word, dtype=torch.int64) * bits).view(1, 1, per_word)
    blocks = (words.to(torch.int64).unsqueeze(-1) >> shifts) & (2**bits - 1)  # (rows, words, per_word)
    if order is not None:
        blocks = blocks[:, :, torch.argsort(torch.tensor(order))]
    return blocks.reshape(words.shape[0], -1)


@dataclass(frozen=True)
class IntCodes:
    """One linear as unsigned integer codes: w[o, i] = (codes[o, i] - zeros[o, g_idx[i]]) * scales[o, g_idx[i]]."""

    codes: Tensor  # (out, in) int64 in [0, 2^bits)
    scales: Tensor  # (out, groups) float32
    zeros: Tensor  # (out, groups) int64
    g_idx: Tensor  # (in,) int64
    group_size: int  # -1: one group per row (per channel)


def int_codes(module: FakeQuantLinear) -> IntCodes:
    """The unsigned codes, scales and zero points of a FakeQuantLinear that kept its scales."""
    scheme = module.weight_scheme
    if module.scale is None or scheme is None:
        raise ExportError("this layer did not keep its scales (a codebook, float8 or double-quantized grid)")
    weight = module.weight.detach().float()
    out_features, in_features = weight.shape
    scale = module.scale.float().expand(out_features, -1)
    groups = scale.shape[1]
    group = in_features // groups
    g_idx = torch.arange(in_features) // group if module.g_idx is None else module.g_idx.to(torch.int64)
    per_input_scale = scale[:, g_idx]  # (out, in)
    signed = torch.round(weight / per_input_scale)
    if module.zero_point is None:  # symmetric: shift to unsigned around 2^(bits-1)
        offset = 2 ** (scheme.bits - 1)
        codes = signed + offset
        zeros = torch.full((out_features, groups), offset, dtype=torch.int64)
    else:
        zeros = module.zero_point.float().expand(out_features, -1).round().to(torch.int64)
        codes = signed + zeros[:, g_idx]
    if codes.min() < 0 or codes.max() > 2**scheme.bits - 1:
        raise ExportError("the weight is not on its grid (was it changed after quantization?)")
    codes = codes.to(torch.int64)
    check = (codes - zeros[:, g_idx]) * per_input_scale
    eps = torch.finfo(module.weight.dtype).eps  # a 16-bit weight holds grid values rounded to its dtype
    if not torch.allclose(check, weight, rtol=max(1e-5, 2 * eps), atol=1e-7):
        raise ExportError("the stored scales do not reproduce the weight; re-run the method")
    return IntCodes(codes, scale, zeros, g_idx, group if groups > 1 else -1)


def gptq_tensors(c: IntCodes, bits: int, v1: bool = True) -> dict[str, Tensor]:
    zeros = c.zeros - 1 if v1 else c.zeros
    return {
        "qweight": pack_rows(c.codes.T.contiguous(), bits),  # (in / per_word, out)
        "qzeros": pack_cols(zeros.T.contiguous() & (2**bits - 1), bits),  # (groups, out / per_word)
        "scales": c.scales.T.contiguous().half(),  # (groups, out)
        "g_idx": c.g_idx.to(torch.int32),
    }


def awq_tensors(c: IntCodes) -> dict[str, Tensor]:
    return {
        "qweight": pack_cols(c.codes.T.contiguous(), 4, AWQ_ORDER),  # (in, out / 8)
        "qzeros": pack_cols(c.zeros.T.contiguous(), 4, AWQ_ORDER),  # (groups, out / 8)
        "scales": c.scales.T.contiguous().half(),
    }


# -- what can be written ---------------------------------------------------------------------------------


def quantized_linears(model: nn.Module) -> dict[str, FakeQuantLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, FakeQuantLinear)}


def _is_bnb(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "quantization_config", None) is not None or any(
        type(m).__module__.startswith("bitsandbytes") for m in model.modules()
    )


def _common_scheme(linears: dict[str, FakeQuantLinear]) -> QuantScheme:
    schemes = {m.weight_scheme for m in linears.values() if m.weight_scheme is not None}
    if len(schemes) != 1:
        raise ExportError(f"the layers use {len(schemes)} different weight schemes; a checkpoint needs one")
    return schemes.pop()


BNB_OWN_FORMAT = "bitsandbytes layers are saved in their own format"


def _int8_split_reason(model: nn.Module) -> str | None:
    """Why LLM.int8's layers (16-bit inputs chosen per call) cannot be a weight file, if it has them."""
    others = sorted({type(m).__name__ for m in model.modules() if type(m).__name__.startswith("LLMInt8")})
    if not others:
        return None
    return (
        f"its {', '.join(others)} layers choose per call which inputs stay 16-bit, which no weight file "
        "records; save the bitsandbytes int8 method's model instead (the same algorithm, bnb's format)"
    )


def available_formats(model: nn.Module | QuantizedModel) -> dict[str, str | None]:
    """{format: None if it can be written, else why not} for this quantized model. Pass the QuantizedModel
    (not only its .model) for "gguf": the method's reports say each tensor's type."""
    from engine.methods.registry import QuantizedModel
    from engine.models.gguf_export import gguf_formats

    quantized = model if isinstance(model, QuantizedModel) else None
    module = quantized.model if quantized is not None else model
    why = _checkpoint_formats(module)
    unreadable = BNB_OWN_FORMAT if _is_bnb(module) else _int8_split_reason(module)
    why.update(gguf_formats(module, quantized, unreadable))
    return why


def _checkpoint_formats(model: nn.Module) -> dict[str, str | None]:
    if _is_bnb(model):
        reason = BNB_OWN_FORMAT
        return {"gptq": reason, "awq": reason, "bnb": None, "dequantized": reason}
    why: dict[str, str | None] = {"bnb": "not a bitsandbytes model"}
    linears = quantized_linears(model)
    missing = _int8_split_reason(model) or "no quantized linear layer in this model"
    why["dequantized"] = None if linears else missing
    try:
        if not linears:
            raise ExportError(missing)
        scheme = _common_scheme(linears)
        if any(m.scale is None for m in linears.values()):
            raise ExportError(f"{scheme.label} is not an integer grid with integer zero points")
        if any(m.act_scheme is not None for m in linears.values()):
            raise ExportError("activations are quantized too (a weight checkpoint cannot say so)")
        if scheme.bits not in (2, 4, 8):
            raise ExportError(f"{scheme.bits}-bit codes do not pack evenly into 32-bit words here")
    except ExportError as exc:
        why["gptq"] = why["awq"] = str(exc)
        return why
    why["gptq"] = None
    if scheme.bits != 4 or scheme.granularity != "group":
        why["awq"] = "AWQ checkpoints hold 4-bit groups only"
    elif any(m.g_idx is not None for m in linears.values()):
        why["awq"] = "act-order reorders groups; AWQ's layout has no g_idx (use GPTQ)"
    else:
        why["awq"] = None
    return why


# -- writing ---------------------------------------------------------------------------------------------


def _plain_tensors(model: nn.Module, skip: set[str]) -> dict[str, Tensor]:
    """Every parameter and persistent buffer outside the quantized linears, shared ones once, float16."""
    tensors: dict[str, Tensor] = {}
    seen: set[int] = set()
    state = model.state_dict(keep_vars=True)
    for name, tensor in state.items():
        owner = name.rpartition(".")[0]
        if owner in skip:
            continue
        pointer = tensor.data_ptr()
        if pointer in seen:  # tied embeddings: the head reads embed_tokens (tie_word_embeddings)
            continue
        seen.add(pointer)
        value = tensor.detach().cpu()
        tensors[name] = value.half() if value.is_floating_point() else value.contiguous()
    return tensors


def _config_dict(model: nn.Module, quantization: dict | None) -> dict:
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    config["torch_dtype"] = config["dtype"] = "float16"
    if quantization is not None:
        config["quantization_config"] = quantization
    return config


def export_model(
    model: nn.Module | QuantizedModel,
    folder: str | Path,
    fmt: str,
    tokenizer=None,
    progress: Progress | None = None,
    source=None,
) -> ExportResult:
    """Write `model` (a quantized model from `quantize_model`, or its .model) to `folder` as `fmt`; see
    FORMATS. The GGUF formats take the QuantizedModel and `source` (a gguf_export.GGUFSource)."""
    from safetensors.torch import save_file

    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    why = available_formats(model).get(fmt)
    if why is not None:
        raise ExportError(f"cannot write {fmt}: {why}")
    from engine.methods.registry import QuantizedModel

    say = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    folder = Path(folder)
    if fmt in GGUF_FORMATS:
        from engine.models.gguf_export import write_gguf

        folder.mkdir(parents=True, exist_ok=True)
        path = write_gguf(model, folder, fmt, source, say)
        say(1.0, "Saved")
        return ExportResult(folder, fmt, {path.name: path.stat().st_size}, time.perf_counter() - start)
    model = model.model if isinstance(model, QuantizedModel) else model
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.safetensors"):
        old.unlink()
    if fmt == "bnb":
        say(0.1, "Saving bitsandbytes layers")
        model.save_pretrained(folder, safe_serialization=True)
    else:
        linears = quantized_linears(model)
        tensors = _plain_tensors(model, set(linears) if fmt != "dequantized" else set())
        quantization = None
        if fmt != "dequantized":
            scheme = _common_scheme(linears)
            codes = {}
            for index, (name, module) in enumerate(linears.items()):
                say(0.05 + 0.8 * index / len(linears), f"Packing {name}")
                codes[name] = int_codes(module)
                if module.bias is not None:
                    tensors[f"{name}.bias"] = module.bias.detach().cpu().half()
            group_size = next(iter(codes.values())).group_size
            if fmt == "gptq":
                v1 = all(bool((c.zeros >= 1).all()) for c in codes.values())
                for name, c in codes.items():
                    tensors.update({f"{name}.{k}": v for k, v in gptq_tensors(c, scheme.bits, v1).items()})
                quantization = {
                    "quant_method": "gptq",
                    "bits": scheme.bits,
                    "group_size": group_size,
                    "desc_act": any(m.g_idx is not None for m in linears.values()),
                    "sym": scheme.symmetric,
                    "true_sequential": True,
                    "checkpoint_format": "gptq" if v1 else "gptq_v2",
                    "quantizer": ["quantization-explorer"],
                }
            else:
                for name, c in codes.items():
                    tensors.update({f"{name}.{k}": v for k, v in awq_tensors(c).items()})
                quantization = {
                    "quant_method": "awq",
                    "bits": 4,
                    "group_size": group_size,
                    "zero_point": True,
                    "version": "gemm",
                }
        say(0.9, "Writing model.safetensors")
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
        (folder / "config.json").write_text(json.dumps(_config_dict(model, quantization), indent=2))
        generation = getattr(model, "generation_config", None)
        if generation is not None:
            generation.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    say(1.0, "Saved")
    files = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    return ExportResult(folder, fmt, files, time.perf_counter() - start)


def zip_folder(folder: str | Path) -> bytes:
    """The folder as an uncompressed zip (safetensors do not compress), for a browser download."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in sorted(Path(folder).iterdir()):
            if path.is_file():
                archive.write(path, arcname=f"{Path(folder).name}/{path.name}")
    return buffer.getvalue()
