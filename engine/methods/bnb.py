"""bitsandbytes as a method: int8 (LLM.int8()) and 4-bit NF4 / FP4 layers, with or without double quant.

The settings go through transformers' `BitsAndBytesConfig` (the same object `from_pretrained` takes),
and every linear but the head becomes the module transformers' integration
(`replace_with_bnb_linear`) would build from it: `bnb.nn.Linear8bitLt(has_fp16_weights=False,
threshold=llm_int8_threshold)` or `bnb.nn.Linear4bit(compute_dtype, compress_statistics=double quant,
quant_type)`, holding this model's weights and quantized by bitsandbytes itself (`Int8Params` /
`Params4bit` moved to the model's device), exactly as transformers quantizes a checkpoint at load time.
The config is attached as `model.config.quantization_config`.

Bits per weight are counted from what the layer's state dict stores (what `save_pretrained` writes):
codes, absmax statistics (fp32, or 8-bit with double quantization plus their own fp32 absmax), and, for
4-bit layers, the codebooks (16 fp32 values, plus a 256-entry fp32 table with double quantization) and
a small packed description; the report's detail splits them.

CPU notes (bitsandbytes 0.50): everything runs on CPU. On CPUs with AVX512-BF16, `Linear4bit` repacks
its weights at the first forward in eval mode into a CPU layout whose absmax is rounded to bfloat16 and
whose double quantization is undone; `_save_to_state_dict` unpacks it again, but the bf16 absmax stays
(we measured logits moving by ~5% of their range on a tiny model after one forward and one save). We
turn that repacking off (`support_avx512bf16_for_cpu = False` on each layer): forwards dequantize the
stored codes with the fp32 absmax (bitsandbytes' generic CPU path), so what runs is what is stored and
saving after inference writes exactly the weights quantized here. This departs from the default
bitsandbytes CPU fast path, whose numbers differ by that bf16 rounding. int8 layers in eval mode run
LLM.int8() (activations cast to fp16, per-token int8, outlier columns in fp16); in training mode
bitsandbytes' CPU path dequantizes the weights instead, so the layers are returned in eval mode.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from engine.methods.calibration import OutputErrors, calibration_batches, run_calibration, scaled
from engine.methods.registry import Calibration, LayerReport, register
from engine.quant.linear import linear_names, replace_linears
from engine.quant.metrics import sqnr_db

MODES = ("int8", "nf4", "fp4")
COMPUTE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATISTICS_KEYS = ("SCB", "absmax", "nested_absmax", "nested_offset", "offset")


class _DropCastWarning(logging.Filter):
    """bitsandbytes logs "inputs will be cast from float32 to float16" on every int8 forward."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast" not in record.getMessage()


logging.getLogger("bitsandbytes.autograd._functions").addFilter(_DropCastWarning())


@dataclass(frozen=True)
class BnbConfig:
    mode: str = "nf4"  # int8: LLM.int8(); nf4 / fp4: 4-bit codebooks in blocks of 64 with fp32 absmax
    double_quant: bool = False  # 4-bit only: quantize the absmax values again to 8 bits (QLoRA)
    compute_dtype: str = "float32"  # 4-bit only: dtype the dequantized matmul runs in
    int8_threshold: float = 6.0  # int8 only: LLM.int8()'s outlier threshold (llm_int8_threshold)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)} (got {self.mode!r})")
        if not isinstance(self.double_quant, bool):
            raise ValueError(f"double_quant must be True or False (got {self.double_quant!r})")
        if self.double_quant and self.mode == "int8":
            raise ValueError("double quantization compresses 4-bit block statistics; use mode nf4 or fp4")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"compute_dtype must be one of {', '.join(COMPUTE_DTYPES)} (got {self.compute_dtype!r})"
            )
        if (
            isinstance(self.int8_threshold, bool)
            or not isinstance(self.int8_threshold, (int, float))
            or (self.int8_threshold < 0)
        ):
            raise ValueError(
                f"int8_threshold must be >= 0 (got {self.int8_threshold!r}); 0 turns outliers off"
            )

    @property
    def label(self) -> str:
        if self.mode == "int8":
            return "bnb int8"
        return f"bnb {self.mode}{' dq' if self.double_quant else ''}"

    def transformers_config(self):
        """The equivalent transformers `BitsAndBytesConfig` (what `from_pretrained` would be given)."""
        from transformers import BitsAndBytesConfig

        if self.mode == "int8":
            return BitsAndBytesConfig(
                load_in_8bit=True,
                llm_int8_threshold=float(self.int8_threshold),
                llm_int8_skip_modules=["lm_head"],
            )
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=self.mode,
            bnb_4bit_use_double_quant=self.double_quant,
            bnb_4bit_compute_dtype=COMPUTE_DTYPES[self.compute_dtype],
            llm_int8_skip_modules=["lm_head"],
        )


@dataclass(frozen=True)
class BnbDetail:
    """What bitsandbytes reports per linear (LayerReport.detail): the stored bytes by kind."""

    mode: str  # int8, nf4 or fp4
    codes_bytes: int  # the packed weight codes
    statistics_bytes: int  # absmax statistics (and their own, with double quantization)
    other_bytes: int  # codebooks and the packed quant-state description
    seconds_quantize: float  # time to build and quantize the layer


def bnb_linear(linear: nn.Linear, settings) -> nn.Module:
    """A bitsandbytes layer built from a `BitsAndBytesConfig`, holding `linear`'s weights, quantized."""
    import bitsandbytes as bnb

    device = linear.weight.device
    has_bias = linear.bias is not None
    weight = linear.weight.detach().to("cpu")  # bitsandbytes quantizes on the move off the CPU (or onto it)
    if settings.quantization_method() == "llm_int8":
        module = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            has_bias,
            has_fp16_weights=settings.llm_int8_has_fp16_weight,
            threshold=settings.llm_int8_threshold,
            device="meta",
        )
        module.weight = bnb.nn.Int8Params(
            weight, requires_grad=False, has_fp16_weights=settings.llm_int8_has_fp16_weight
        ).to(device)
    else:
        module = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            has_bias,
            settings.bnb_4bit_compute_dtype,
            compress_statistics=settings.bnb_4bit_use_double_quant,
            quant_type=settings.bnb_4bit_quant_type,
            quant_storage=settings.bnb_4bit_quant_storage,
            device="meta",
        )
        module.weight = bnb.nn.Params4bit(
            weight,
            requires_grad=False,
            compress_statistics=settings.bnb_4bit_use_double_quant,
            quant_type=settings.bnb_4bit_quant_type,
            quant_storage=settings.bnb_4bit_quant_storage,
            module=module,
        ).to(device)
        module.support_avx512bf16_for_cpu = False  # no lossy CPU repacking (see the module docstring)
    if has_bias:
        module.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
    module.source_cls = type(linear)  # as transformers records it
    module.requires_grad_(False)
    return module.eval()


@torch.no_grad()
def dequantized_weight(module: nn.Module) -> Tensor:
    """(out_features, in_features) float32 weights a bitsandbytes layer stands for (before any forward)."""
    import bitsandbytes.functional as bnb_functional

    weight = module.weight
    if type(weight).__name__ == "Params4bit":
        return bnb_functional.dequantize_4bit(weight.data, weight.quant_state).float()
    scb = weight.SCB if getattr(weight, "SCB", None) is not None else module.state.SCB
    return weight.data.float() * (scb.float() / 127).unsqueeze(1)


def stored_bytes(module: nn.Module) -> dict[str, int]:
    """Bytes of the layer's state dict (bias excluded) by kind: codes, statistics, other (codebooks...)."""
    parts = {"codes": 0, "statistics": 0, "other": 0}
    for key, tensor in module.state_dict().items():
        if key == "bias":
            continue
        size = tensor.numel() * tensor.element_size()
        leaf = key.rsplit(".", 1)[-1]
        kind = "codes" if key == "weight" else "statistics" if leaf in STATISTICS_KEYS else "other"
        parts[kind] += size
    return parts


@register(BnbConfig, name="bitsandbytes", calibration=Calibration.OPTIONAL_ERRORS, detail_type=BnbDetail)
def bitsandbytes_method(model, config: BnbConfig, calib, progress) -> list[LayerReport]:
    settings = config.transformers_config()
    batches = None if calib is None else calibration_batches(calib)
    references: dict[str, tuple[Tensor, Tensor | None]] = {}
    built: dict[str, tuple[float, float, BnbDetail]] = {}

    def make(linear: nn.Linear, name: str) -> nn.Module:
        start = time.perf_counter()
        module = bnb_linear(linear, settings)
        parts = stored_bytes(module)
        bits = 8 * sum(parts.values()) / (linear.in_features * linear.out_features)
        sqnr = sqnr_db(linear.weight.detach().float(), dequantized_weight(module))
        if batches is not None:
            references[name] = (linear.weight.detach(), None if linear.bias is None else linear.bias.detach())
        detail = BnbDetail(
            config.mode,
            parts["codes"],
            parts["statistics"],
            parts["other"],
            seconds_quantize=time.perf_counter() - start,
        )
        built[name] = (bits, sqnr, detail)
        return module

    names = linear_names(model)
    replace_linears(model, make, progress=scaled(progress, 0.0, 0.5 if batches else 1.0))
    model.config.quantization_config = settings
    errors: dict[str, float] = {}
    if batches is not None:
        with OutputErrors(model, references) as measured:
            run_calibration(model, batches, scaled(progress, 0.5, 1.0))
        errors = measured.relative()
        references.clear()
    return [
        LayerReport(name, bits, sqnr, errors.get(name), detail.seconds_quantize, detail)
        for name, (bits, sqnr, detail) in ((n, built[n]) for n in names)
    ]
