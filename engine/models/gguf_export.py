"""Saving a model quantized here as one `.gguf` file: the file a llama.cpp user runs.

Written with the `gguf` package's `GGUFWriter`, the way llama.cpp's convert_hf_to_gguf.py and
llama-quantize lay a llama model out:

- Tensor names from `gguf.get_tensor_name_map` (`blk.N.attn_q.weight`, `token_embd.weight`, ...); a tied
  head is not written (llama.cpp reads `token_embd` for it), an untied one is `output.weight`.
- The q and k projections' rows permuted as convert_hf_to_gguf.py's `LlamaModel.permute` does (llama.cpp's
  rope pairs neighbouring values, transformers' pairs the two halves of each head); transformers' GGUF
  loader undoes it.
- Linear weights packed by engine.quant.gguf into ggml's block bytes, with each tensor's type as the GGUF
  method recorded it (`GGUFDetail.used`; None: F16), or as a planned recipe gave it (`PlannedDetail`, a
  mixed-type file: every format must be a GGUF type; general.file_type is the type covering the most
  weights). Packed from the ORIGINAL (reference) weights, since a k-quant re-quantized from its own output
  need not give the same bytes; the packed bytes must dequantize to the fake-quantized model's weights
  exactly, or nothing is written. Norms (1-D tensors) are F32, the
  embeddings F16 unless the method quantized them.
- "gguf_f16": any llama model's weights as F16 (no size saving), for models whose format has no GGUF
  type (int4 groups, NF4, ...): llama.cpp runs it, and quantizes it further with llama-quantize.
- Metadata: for a model converted from a .gguf (the offline default), its general.*, llama.* and
  tokenizer.* fields are copied; for a Hugging Face folder they are built from its config and a BPE
  tokenizer.json (tokens in id order, token types, merges and special ids through `gguf.SpecialVocab`,
  as convert_hf_to_gguf's `_set_vocab_gpt2` writes them). One departure: llama.cpp names the
  pre-tokenizer from a hash of known tokenizers' output; without that table no `tokenizer.ggml.pre` is
  written, and llama.cpp then uses its default pre-tokenizer (and says so when loading).

Only llama-architecture models are written (model_type "llama"); others get an ExportError.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import singledispatch
from pathlib import Path

import gguf
import numpy as np
import torch
from gguf import MODEL_ARCH, MODEL_TENSOR, GGMLQuantizationType, GGUFValueType, LlamaFileType, TokenType
from torch import Tensor, nn

from engine._types import Progress
from engine.methods.gguf import GGUFConfig, GGUFDetail
from engine.methods.registry import QuantizedModel
from engine.models.export_types import GGUF_FORMATS, ExportError
from engine.planner.method import PlannedConfig, PlannedDetail
from engine.quant.gguf import Q2_K, Q3_K, Q4_0, Q4_1, Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, GGUFType
from engine.quant.gguf import dequantize as gguf_dequantize
from engine.quant.gguf import quantize as gguf_quantize

NO_GGUF_TYPE = "this model's format has no GGUF type; quantize it with the GGUF method"
# general.file_type for a model of one requested type (llama.cpp's LLAMA_FTYPE_*; the "_S" mixes are the
# ones whose default type is used for every tensor, as here)
FILE_TYPES: dict[GGUFType, LlamaFileType] = {
    Q8_0: LlamaFileType.MOSTLY_Q8_0,
    Q4_0: LlamaFileType.MOSTLY_Q4_0,
    Q4_1: LlamaFileType.MOSTLY_Q4_1,
    Q5_0: LlamaFileType.MOSTLY_Q5_0,
    Q5_1: LlamaFileType.MOSTLY_Q5_1,
    Q2_K: LlamaFileType.MOSTLY_Q2_K,
    Q3_K: LlamaFileType.MOSTLY_Q3_K_S,
    Q4_K: LlamaFileType.MOSTLY_Q4_K_S,
    Q5_K: LlamaFileType.MOSTLY_Q5_K_S,
    Q6_K: LlamaFileType.MOSTLY_Q6_K,
}
COPIED_PREFIXES = ("general.", "llama.", "tokenizer.")  # fields carried over from a source .gguf
SET_HERE = {
    "general.architecture",
    "general.file_type",
    "general.quantization_version",
    "general.quantized_by",
}
TYPES_ALL_F16 = None  # `types` for "gguf_f16": every matrix F16


@dataclass(frozen=True)
class GGUFSource:
    """Where the quantized model came from: what a GGUF file needs besides the quantized weights."""

    reference: nn.Module  # the float model it was quantized from: its weights are what gets packed
    folder: Path  # its folder: a Hugging Face folder, or one converted from a .gguf (qe_conversion.json)


# -- which type each tensor gets --------------------------------------------------------------------------


@singledispatch
def recorded_types(config: object, quantized: QuantizedModel) -> dict[str, GGUFType | None]:
    """{module name: the GGUF type its weight was quantized to (None: F16)} from the method's reports."""
    raise ExportError(NO_GGUF_TYPE)


@recorded_types.register
def _(config: GGUFConfig, quantized: QuantizedModel) -> dict[str, GGUFType | None]:
    types = {}
    for report in quantized.layers:
        if not isinstance(report.detail, GGUFDetail):
            raise ExportError(f"{report.name} has no GGUF type in its report; re-run the GGUF method")
        types[report.name] = report.detail.used
    return types


@recorded_types.register
def _(config: PlannedConfig, quantized: QuantizedModel) -> dict[str, GGUFType | None]:
    types, others = {}, []
    for report in quantized.layers:
        if not isinstance(report.detail, PlannedDetail):
            raise ExportError(f"{report.name} has no format in its report; keep the planned model again")
        if isinstance(report.detail.fmt, GGUFType):
            types[report.name] = report.detail.fmt
        else:
            others.append(f"{report.name} is {report.detail.label}")
    if others:
        shown = ", ".join(others[:3]) + (f" (and {len(others) - 3} more)" if len(others) > 3 else "")
        which = "which llama.cpp has no type for" if len(others) == 1 else "formats llama.cpp has no type for"
        raise ExportError(f"{shown}, {which}; plan with the llama.cpp candidate set")
    return types


def architecture_reason(model: nn.Module) -> str | None:
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type != "llama":
        return f"GGUF export is written for llama models only here (this one is {model_type or 'unknown'})"
    rope = getattr(model.config, "rope_parameters", None) or {}
    if rope.get("rope_type", "default") != "default":
        return f"its rope scaling ({rope.get('rope_type')}) is not written to GGUF here"
    return None


def gguf_formats(
    model: nn.Module, quantized: QuantizedModel | None, unreadable: str | None
) -> dict[str, str | None]:
    """{"gguf": why not or None, "gguf_f16": ...}; `unreadable`: why the weights cannot be read as floats
    (bitsandbytes or LLM.int8 layers), if so."""
    why = unreadable or architecture_reason(model)
    if why is not None:
        return dict.fromkeys(GGUF_FORMATS, why)
    if quantized is None:
        return {"gguf": NO_GGUF_TYPE, "gguf_f16": None}
    try:
        recorded_types(quantized.config, quantized)
    except ExportError as exc:
        return {"gguf": str(exc), "gguf_f16": None}
    return {"gguf": None, "gguf_f16": None}


# -- tensors --------------------------------------------------------------------------------------------


def llama_permute(weight: Tensor, heads: int) -> Tensor:
    """Rows of a q or k projection (heads * head_dim, ...) in llama.cpp's rope order: within each head, the
    two halves interleaved (row i of the first half, then row i of the second)."""
    rows = weight.shape[0]
    return (
        weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)
    )


@dataclass(frozen=True)
class PackedTensor:
    name: str  # llama.cpp's name, e.g. blk.0.attn_q.weight
    data: np.ndarray  # F32 / F16 values, or uint8 block bytes
    raw_type: GGMLQuantizationType | None  # None: the dtype of `data` says it (F32 / F16)


def _pack(
    name: str, module: str, weight: Tensor, reference: Tensor, t: GGUFType | None, check: bool
) -> PackedTensor:
    """One 2-D weight (already in llama.cpp's row order) as F16 or t's blocks, checked against ours."""
    if t is None:
        half = weight.detach().cpu().to(torch.float16)
        if check and not torch.equal(half.to(weight.dtype), weight.detach().cpu()):
            raise ExportError(f"{module}: the weight is not its float16 value; was the model changed?")
        return PackedTensor(name, half.numpy(), None)
    packed = gguf_quantize(reference, t)  # (rows, blocks * type_size) uint8
    back = gguf_dequantize(packed, t, reference.shape).to(weight.dtype)
    if not torch.allclose(back, weight.detach().cpu(), rtol=1e-6, atol=0.0):
        raise ExportError(
            f"{module}: the packed {t.name} blocks do not reproduce this model's weight (was it changed after "
            "quantizing, or quantized from another model?); nothing was written"
        )
    return PackedTensor(name, packed.numpy(), GGMLQuantizationType(t.ggml_id))


def pack_tensors(
    model: nn.Module,
    types: dict[str, GGUFType | None] | None,
    reference: nn.Module | None,
    progress: Progress | None = None,
) -> list[PackedTensor]:
    """Every parameter of `model` (a tied one once) under llama.cpp's name, packed; ExportError before
    anything is written when a name is unknown or a weight does not match its recorded type."""
    config = model.config
    names = gguf.get_tensor_name_map(MODEL_ARCH.LLAMA, config.num_hidden_layers)
    heads = {MODEL_TENSOR.ATTN_Q: config.num_attention_heads, MODEL_TENSOR.ATTN_K: config.num_key_value_heads}
    params = list(model.named_parameters())
    out = []
    for index, (name, param) in enumerate(params):
        found = names.get_type_and_name(name, try_suffixes=(".weight", ".bias"))
        if found is None:
            raise ExportError(f"{name} has no llama.cpp tensor name; this model's layout is not llama's")
        kind, gguf_name = found
        module = name.rpartition(".")[0]
        weight = param.detach().cpu()
        if kind in heads:
            weight = llama_permute(weight, heads[kind])
        if weight.dim() == 1:
            out.append(PackedTensor(gguf_name, weight.float().numpy(), None))
            continue
        t = None if types is None else types.get(module)
        original = None
        if t is not None:
            if reference is None:
                raise ExportError("a quantized GGUF file is packed from the reference model; none was given")
            original = reference.get_parameter(name).detach().cpu()
            if original.shape != param.shape:
                raise ExportError(
                    f"{name}: the reference model's weight has another shape; is it the source?"
                )
            original = llama_permute(original, heads[kind]) if kind in heads else original
        out.append(_pack(gguf_name, module, weight, original, t, check=types is not None and module in types))
        if progress:
            progress(0.05 + 0.75 * (index + 1) / len(params), f"Packed {gguf_name}")
    return out


# -- metadata -------------------------------------------------------------------------------------------


def source_gguf(folder: Path) -> Path | None:
    """The .gguf a converted folder was made from (its qe_conversion.json), if it is still there."""
    marker = Path(folder) / "qe_conversion.json"
    if not marker.is_file():
        return None
    try:
        path = Path(json.loads(marker.read_text())["source"]["path"])
    except (ValueError, KeyError, TypeError):
        return None
    return path if path.is_file() else None


def copy_fields(writer: gguf.GGUFWriter, path: Path) -> None:
    """The source file's general.*, llama.* and tokenizer.* fields, with their value types."""
    reader = gguf.GGUFReader(path)
    architecture = reader.fields["general.architecture"].contents()
    if architecture != "llama":
        raise ExportError(f"{path.name} is a {architecture} model; GGUF export is written for llama only")
    for key, field in reader.fields.items():
        if not key.startswith(COPIED_PREFIXES) or key in SET_HERE or len(field.types) > 2:
            continue
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)


def bpe_vocab(folder: Path, vocab_size: int) -> tuple[list[str], list[int]]:
    """(tokens in id order, token types) from a BPE tokenizer.json, ids the tokenizer lacks as [PADn]."""
    path = Path(folder) / "tokenizer.json"
    if not path.is_file():
        raise ExportError("the model folder has no tokenizer.json; a GGUF file needs the tokenizer")
    data = json.loads(path.read_text(encoding="utf-8"))
    kind = data.get("model", {}).get("type")
    if kind != "BPE":
        raise ExportError(f"its tokenizer is {kind or 'not a known kind'}; GGUF export writes BPE tokenizers")
    by_id = {index: token for token, index in data["model"]["vocab"].items()}
    added = {entry["id"]: entry for entry in data.get("added_tokens", [])}
    by_id.update({index: entry["content"] for index, entry in added.items()})
    if max(by_id) >= vocab_size:
        raise ExportError(f"the tokenizer has ids up to {max(by_id)}; the model has {vocab_size} embeddings")
    tokens, kinds = [], []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            kinds.append(TokenType.USER_DEFINED)
        elif index in added:
            tokens.append(by_id[index])
            kinds.append(TokenType.CONTROL if added[index].get("special") else TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[index])
            kinds.append(TokenType.NORMAL)
    return tokens, [int(k) for k in kinds]


def config_fields(writer: gguf.GGUFWriter, model: nn.Module, folder: Path) -> None:
    """llama.* hyperparameters from the model's config and the tokenizer from tokenizer.json."""
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    rope = getattr(config, "rope_parameters", None) or {}
    writer.add_name(Path(folder).name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)
    tokens, kinds = bpe_vocab(folder, config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(kinds)
    gguf.SpecialVocab(folder, load_merges=True, n_vocab=config.vocab_size).add_to_gguf(writer, quiet=True)


# -- writing --------------------------------------------------------------------------------------------


def llama_file_type(requested) -> LlamaFileType:
    """general.file_type for a GGUF config's type: a block type (FILE_TYPES) or a mix such as Q4_K_M."""
    if isinstance(requested, GGUFType):
        return FILE_TYPES[requested]
    try:  # a file-level mix is named as llama.cpp names its file type
        return LlamaFileType[f"MOSTLY_{requested.label}"]
    except KeyError:
        raise ExportError(f"{requested.label} has no llama.cpp file type") from None


@singledispatch
def file_type_and_label(config: object, quantized: QuantizedModel, types: dict) -> tuple[LlamaFileType, str]:
    """(general.file_type, the file name's label) of a model whose tensors get `types`."""
    raise ExportError(NO_GGUF_TYPE)


@file_type_and_label.register
def _(config: GGUFConfig, quantized: QuantizedModel, types: dict) -> tuple[LlamaFileType, str]:
    return llama_file_type(config.type), config.type.label


@file_type_and_label.register
def _(config: PlannedConfig, quantized: QuantizedModel, types: dict) -> tuple[LlamaFileType, str]:
    """A mixed-type file is named by the type covering the most weights (llama.cpp's own mixes are named by
    their base type too; its GUESSED flag would read as "all F32 (guessed)")."""
    weights: dict[GGUFType, int] = {}
    for name, t in types.items():
        if t is not None:
            weights[t] = weights.get(t, 0) + quantized.model.get_submodule(name).weight.numel()
    if not weights:
        raise ExportError("this planned model has no tensor in a GGUF type")
    most = max(weights, key=lambda t: weights[t])
    return FILE_TYPES[most], f"planned-{quantized.bits_per_weight:.2f}bpw"


def file_stem(source: GGUFSource) -> str:
    path = source_gguf(source.folder)
    return path.name.split(".")[0] if path is not None else Path(source.folder).name


def write_gguf(
    model: nn.Module | QuantizedModel,
    folder: Path,
    fmt: str,
    source: GGUFSource | None,
    progress: Progress | None = None,
) -> Path:
    """Write `model` as `folder/<name>-<type>.gguf` ("gguf": the GGUF method's types, or a planned recipe's
    as "planned-4.50bpw"; "gguf_f16": F16) and return the path; ExportError, with nothing written, when it
    cannot be."""
    quantized = model if isinstance(model, QuantizedModel) else None
    module = quantized.model if quantized is not None else model
    if source is None:
        raise ExportError("a GGUF file needs the model it was quantized from (its tokenizer and weights)")
    why = gguf_formats(module, quantized, None).get(fmt, f"unknown GGUF format {fmt!r}")
    if why is not None:
        raise ExportError(why)
    say = progress or (lambda fraction, message: None)
    if fmt == "gguf":
        types = recorded_types(quantized.config, quantized)
        file_type, label = file_type_and_label(quantized.config, quantized, types)
    else:
        types, file_type, label = TYPES_ALL_F16, LlamaFileType.MOSTLY_F16, "F16"
    say(0.05, "Packing tensors")
    tensors = pack_tensors(module, types, source.reference, say)
    path = Path(folder) / f"{file_stem(source)}-{label}.gguf"
    partial = path.with_name(path.name + ".part")
    writer = gguf.GGUFWriter(partial, arch="llama")
    try:
        origin = source_gguf(source.folder)
        if origin is not None:
            copy_fields(writer, origin)
        else:
            config_fields(writer, module, source.folder)
        writer.add_file_type(int(file_type))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_quantized_by("Quantization Explorer")
        for tensor in tensors:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.raw_type)
        say(0.85, f"Writing {path.name}")
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        partial.replace(path)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    return path
