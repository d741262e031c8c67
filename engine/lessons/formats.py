"""Lesson: today's block formats on one real weight (a model's MLP output projection).

Five small experiments, each returning a frozen dataclass of tensors and floats with a `takeaway` built
from its own numbers:

1. `outlier_row`: why block scales. int4 per channel vs groups of 32 and 16 on the row with the largest
   outlier, the error of every block of 32 in that row;
2. `element_lesson`: the E2M1 element (+-{0, 0.5, 1, 1.5, 2, 3, 4, 6}) vs int4's 15 even levels, both with
   each block's absmax mapped to the top value, and the error inside / outside half of the block's range;
3. `scale_lesson`: the scale's own format. MXFP4's E8M0 power of two (floor rule) puts a block's max
   anywhere in [4, 8) of the element scale, NVFP4's E4M3 scale (times one FP32 per tensor) puts it near 6;
   where each block's max lands, and the error of MXFP4 vs NVFP4 vs int4 g32;
4. `kquant_lesson`: llama.cpp's Q4_K (super-blocks of 256, 6-bit sub-block scales and mins) vs Q4_0 at the
   same 4.5 bits, on the real weight and on fresh Gaussian values of the same spread;
5. `formats_table`: bits per weight of each format and the GPUs that run it natively (engine.sizing.gpus).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import Tensor

from engine.analysis.priorgrid import detect_prior_grid
from engine.lessons._common import ratio, sample_values
from engine.quant import gguf
from engine.quant.elements import int_range
from engine.quant.gguf import GGUFType
from engine.quant.metrics import mse, sqnr_db
from engine.quant.primitives import choose_qparams, fake_quantize
from engine.quant.schemes import QuantScheme, bits_per_weight, parse_label
from engine.sizing.gpus import NATIVE, gpu_catalog, native_support

BLOCK = 32  # the block the lesson measures errors over (MXFP4's and int4 g32's)
OUTLIER_SCHEMES = ("int4 channel", "int4 g32", "int4 g16")
SCALE_SCHEMES = {  # label -> (name shown, how its scale is stored)
    "mxfp4": ("MXFP4", "E8M0 power of two per 32"),
    "nvfp4": ("NVFP4", "E4M3 per 16, times one FP32 per tensor"),
    "int4 g32": ("int4 g32", "FP16 per 32"),
}
SAMPLE_ROWS = 96  # rows sections 2 and 4 measure (Q4_K's scale search is slow on a CPU); 3 measures all
TABLE_FORMATS = (
    parse_label("int4 g32"),
    parse_label("mxfp4"),
    parse_label("nvfp4"),
    gguf.Q4_0,
    gguf.Q4_K,
    parse_label("mxfp8"),
    gguf.Q8_0,
)


def _spread_rows(rows: Tensor, count: int = SAMPLE_ROWS) -> Tensor:
    """`count` evenly spaced rows (all of them when there are fewer)."""
    return rows[torch.linspace(0, rows.shape[0] - 1, min(count, rows.shape[0])).round().long().unique()]


def _rows(weight: Tensor) -> Tensor:
    """The weight as float32 rows; refuses a row length the block formats cannot split."""
    if weight.dim() < 2:
        raise ValueError("the formats lesson needs a weight matrix (rows of input values)")
    rows = weight.detach().to(device="cpu", dtype=torch.float32).reshape(-1, weight.shape[-1])
    if rows.shape[-1] % BLOCK:
        raise ValueError(
            f"this weight's rows hold {rows.shape[-1]} values; the block formats here need a multiple of 32"
        )
    return rows


# -- 1. why block scales -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutlierRow:
    row: int  # the weight row shown: the one whose largest value stands out most from its rms
    column: int  # where its largest value sits
    values: Tensor  # (cols,) the row
    block_error: dict[str, Tensor]  # scheme label -> (cols / BLOCK,) MSE of each block of 32
    mse: dict[str, float]  # scheme label -> MSE over the row

    @property
    def outlier_block(self) -> int:
        return self.column // BLOCK

    def others(self, label: str) -> float:
        """Mean error of the row's blocks of 32 that do not hold the outlier."""
        errors = self.block_error[label]
        keep = torch.ones_like(errors, dtype=torch.bool)
        keep[self.outlier_block] = False
        return float(errors[keep].mean())

    @property
    def takeaway(self) -> str:
        peak = float(self.values[self.column])
        rms = float(self.values.pow(2).mean().sqrt())
        channel, g32, g16 = (self.others(label) for label in OUTLIER_SCHEMES)
        return (
            f"In row {self.row}, one value ({peak:+.2f}, {abs(peak) / rms:.0f}× the row's rms) sets the "
            f"per-channel step for all {self.values.numel():,} values. With a scale per 32 only its own "
            f"block pays: the other blocks' error is {ratio(channel, g32):.1f}× lower with groups of 32 "
            f"and {ratio(channel, g16):.1f}× lower with groups of 16."
        )


def outlier_row(weight: Tensor) -> OutlierRow:
    rows = _rows(weight)
    rms = rows.pow(2).mean(dim=1).sqrt().clamp_min(torch.finfo(torch.float32).tiny)
    row = int((rows.abs().amax(dim=1) / rms).argmax())
    x = rows[row : row + 1]
    errors, mses = {}, {}
    for label in OUTLIER_SCHEMES:
        xq = fake_quantize(x, parse_label(label))
        errors[label] = (x - xq).pow(2).reshape(-1, BLOCK).mean(dim=1)
        mses[label] = mse(x, xq)
    return OutlierRow(row, int(x.abs().argmax()), x[0].clone(), errors, mses)


# -- 2. the E2M1 element -------------------------------------------------------------------------------

ELEMENT_SCHEMES = {"int4": "int4 g32 scale_fp32", "E2M1": "fp4_e2m1 g32 scale_fp32"}


@dataclass(frozen=True)
class ElementLesson:
    top: float  # each block's absmax maps here (E2M1's largest value, 6)
    levels: dict[str, Tensor]  # grid name -> its levels in those units, sorted
    values: Tensor  # a sample of the weight's values in those units (value / block absmax * top)
    inner_share: float  # share of values within half of their block's range
    mse_inner: dict[str, float]  # grid name -> MSE (in those units) over the inner values
    mse_outer: dict[str, float]  # ... and over the outer ones
    rows: int  # rows of the weight measured

    def step(self, name: str, where: str) -> float:
        """The gap between levels next to 0 (`where` "zero") or at the top ("top")."""
        gaps = self.levels[name].diff()
        return float(gaps[len(gaps) // 2] if where == "zero" else gaps[-1])

    @property
    def takeaway(self) -> str:
        inner = ratio(self.mse_inner["int4"], self.mse_inner["E2M1"])
        outer = ratio(self.mse_outer["E2M1"], self.mse_outer["int4"])
        near = "lower" if inner >= 1 else "higher"
        far = "higher" if outer >= 1 else "lower"
        return (
            f"{self.inner_share:.0%} of this weight's values sit in the inner half of their block's range, "
            f"where E2M1's error is {max(inner, 1 / inner):.1f}× {near} than int4's; in the outer half, "
            f"where its steps are {self.step('E2M1', 'top'):g} wide, it is {max(outer, 1 / outer):.1f}× {far}."
        )


def element_lesson(weight: Tensor, sample: int = 20_000) -> ElementLesson:
    rows = _spread_rows(_rows(weight))
    fp4 = parse_label(ELEMENT_SCHEMES["E2M1"])
    top = fp4.element.grid_max(fp4)
    qmax = int_range(4, True)[1]
    levels = {
        "int4": torch.arange(-qmax, qmax + 1, dtype=torch.float32) * (top / qmax),
        "E2M1": fp4.element.grid_values(fp4).float(),
    }
    blocks = rows.reshape(-1, BLOCK)
    unit = top / blocks.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    scaled = blocks * unit
    inner = scaled.abs() < top / 2
    mse_inner, mse_outer = {}, {}
    for name, label in ELEMENT_SCHEMES.items():
        error = (fake_quantize(rows, parse_label(label)).reshape(-1, BLOCK) * unit - scaled).pow(2)
        mse_inner[name] = float(error[inner].mean()) if inner.any() else 0.0
        mse_outer[name] = float(error[~inner].mean()) if (~inner).any() else 0.0
    share = float(inner.float().mean())
    values = sample_values(scaled, sample)
    return ElementLesson(top, levels, values, share, mse_inner, mse_outer, rows.shape[0])


# -- 3. the scale's own format -------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleRow:
    label: str  # the scheme label ("mxfp4")
    name: str  # as the lesson shows it ("MXFP4")
    scale_format: str
    top: float  # the largest element value a block's max can become (6 for E2M1, 7 for int4)
    scales: Tensor  # (blocks,) the scale each block's codes are multiplied by
    ratios: (
        Tensor  # (blocks,) block absmax / scale: where the max sits before rounding (zero blocks left out)
    )
    landed: dict[float, float]  # element value a block's max rounds to -> share of blocks
    saturated: float  # share of blocks whose max is above the top value, so it is clipped
    wasted: float  # share of blocks whose max rounds below the top value, so the top code goes unused
    worst_clip: float  # the most a block's max loses to clipping, as a share of its value
    mse: float
    sqnr_db: float
    bits_per_weight: float


@dataclass(frozen=True)
class ScaleLesson:
    rows: list[ScaleRow]  # MXFP4, NVFP4, int4 g32

    def row(self, label: str) -> ScaleRow:
        return next(r for r in self.rows if r.label == label)

    @property
    def takeaway(self) -> str:
        mx, nv, g32 = (self.row(label) for label in SCALE_SCHEMES)
        spread = float((nv.ratios / nv.top - 1).abs().max()) if nv.ratios.numel() else 0.0
        return (
            f"MXFP4's power-of-two scale clips the max of {mx.saturated:.0%} of blocks and leaves the top "
            f"code unused in {mx.wasted:.0%}; NVFP4's E4M3 scale puts every block's max within "
            f"{spread:.0%} of 6, and its error is {ratio(mx.mse, nv.mse):.2f}× lower than MXFP4's "
            f"(int4 g32: {ratio(mx.mse, g32.mse):.2f}× lower, at NVFP4's 4.5 bits)."
        )


def _scale_row(rows: Tensor, label: str) -> ScaleRow:
    scheme = parse_label(label)
    name, scale_format = SCALE_SCHEMES[label]
    g = scheme.group_size
    scales = choose_qparams(rows, scheme).scale.reshape(-1).float()
    xq = fake_quantize(rows, scheme)
    absmax = rows.reshape(-1, g).abs().amax(dim=1)
    nonzero = absmax > 0
    ratios = (absmax / scales)[nonzero]
    landed = (xq.reshape(-1, g).abs().amax(dim=1) / scales)[nonzero]
    top = scheme.element.grid_max(scheme)
    values, counts = torch.unique(landed.round(decimals=3), return_counts=True)
    share = (counts / max(int(nonzero.sum()), 1)).tolist()
    return ScaleRow(
        label,
        name,
        scale_format,
        top,
        scales,
        ratios,
        dict(zip(values.tolist(), share, strict=True)),
        float((ratios > top * (1 + 1e-6)).float().mean()) if ratios.numel() else 0.0,
        float((landed < top * (1 - 1e-6)).float().mean()) if landed.numel() else 0.0,
        float((1 - top / ratios).clamp_min(0).max()) if ratios.numel() else 0.0,
        mse(rows, xq),
        sqnr_db(rows, xq),
        bits_per_weight(scheme, rows.shape[1], rows.shape[0]),
    )


def scale_lesson(weight: Tensor) -> ScaleLesson:
    rows = _rows(weight)
    return ScaleLesson([_scale_row(rows, label) for label in SCALE_SCHEMES])


# -- 4. llama.cpp's k-quants ---------------------------------------------------------------------------

CODES, SUB_SCALES, FP16 = "4-bit codes", "6-bit sub-block scale and min", "FP16 scales"


def super_block_layouts() -> dict[str, list[tuple[str, int]]]:
    """256 values in Q4_K and in Q4_0, part by part as (kind, bits) in storage order: one Q4_K super-block
    (8 sub-blocks of 32 codes, each with a 6-bit scale and a 6-bit min, then the fp16 d and dmin those are
    scaled by: ggml's block_q4_K) and eight Q4_0 blocks (an fp16 scale, then 32 codes: block_q4_0)."""
    q4_k = [part for _ in range(8) for part in ((CODES, 32 * 4), (SUB_SCALES, 2 * 6))] + [(FP16, 2 * 16)]
    q4_0 = [part for _ in range(8) for part in ((FP16, 16), (CODES, 32 * 4))]
    layouts = {"Q4_K": q4_k, "Q4_0": q4_0}
    for name, parts in layouts.items():  # exactly the bytes ggml stores for 256 values
        t = gguf.gguf_type(name)
        assert sum(bits for _, bits in parts) == t.type_size * 8 * (gguf.Q4_K.block_size // t.block_size)
    return layouts


@dataclass(frozen=True)
class KQuantLesson:
    rows: int  # rows measured
    total_rows: int
    cols: int
    bits: dict[str, float]  # "Q4_0" / "Q4_K" -> bits per weight
    real: dict[str, float]  # -> SQNR (dB) on the weight's rows
    fresh: dict[str, float]  # -> SQNR (dB) on Gaussian values of the same shape and spread
    real_mse: dict[str, float]
    prior_grid: str  # how the weight was stored before, when it already sits on a low-bit grid; else ""

    @property
    def takeaway(self) -> str:
        gain, fresh = (self.real["Q4_K"] - self.real["Q4_0"]), (self.fresh["Q4_K"] - self.fresh["Q4_0"])
        text = (
            f"Same {self.bits['Q4_K']:g} bits per weight: Q4_K's SQNR is {gain:+.1f} dB against Q4_0's on "
            f"this weight and {fresh:+.1f} dB on fresh Gaussian values"
        )
        if self.prior_grid:
            return (
                text + "; the gap on the real weight is larger because it was already stored on a 4-bit grid."
            )
        return text + "."


def kquant_lesson(weight: Tensor, rows: int = SAMPLE_ROWS) -> KQuantLesson:
    """Q4_0 vs Q4_K on `rows` evenly spaced rows of the weight; the rows must hold a multiple of 256."""
    all_rows = _rows(weight)
    gguf.Q4_K.check_row(all_rows.shape[1])
    x = _spread_rows(all_rows, rows)
    fresh = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * x.std()
    real, synthetic, real_mse = {}, {}, {}
    for t in (gguf.Q4_0, gguf.Q4_K):
        xq = gguf.fake_quantize(x, t)
        real[t.name], real_mse[t.name] = sqnr_db(x, xq), mse(x, xq)
        synthetic[t.name] = sqnr_db(fresh, gguf.fake_quantize(fresh, t))
    prior = detect_prior_grid(x)
    bits = {t.name: t.bits_per_weight for t in (gguf.Q4_0, gguf.Q4_K)}
    description = prior.description if prior.detected else ""
    return KQuantLesson(
        x.shape[0], all_rows.shape[0], x.shape[1], bits, real, synthetic, real_mse, description
    )


# -- 5. bits per weight and where each format runs natively -------------------------------------------


@dataclass(frozen=True)
class FormatRow:
    name: str
    element: str
    block: int  # values per scale
    scale: str  # how a block's scale is stored
    bits_per_weight: float  # codes and block scales, large-matrix limit
    per_tensor_bits: int  # bits stored once per tensor on top (NVFP4's FP32 scale)
    native_on: tuple[str, ...]  # GPU architectures of the catalog whose matrix units take it
    elsewhere: str  # how the other GPUs run it (weight-only kernels or emulated)


@functools.singledispatch
def _describe(fmt) -> tuple[str, str, int, str, float, int]:
    raise TypeError(f"no description for {type(fmt).__name__}")


@_describe.register
def _(fmt: QuantScheme) -> tuple[str, str, int, str, float, int]:
    scale = {"e8m0": "E8M0 (power of two)", "e4m3": "E4M3 (+ FP32 per tensor)"}.get(fmt.scale_dtype, "FP16")
    element = f"int{fmt.bits}" if fmt.is_int else fmt.format.upper().replace("_", " ")
    name = fmt.label.split("_")[0].upper() if fmt.is_microscaling else fmt.label
    return name, element, fmt.group_size, scale, bits_per_weight(fmt), 32 if fmt.two_level else 0


@_describe.register
def _(fmt: GGUFType) -> tuple[str, str, int, str, float, int]:
    element = f"int{int(fmt.bits_per_weight)}"  # codes plus under one bit of scales
    scale = "6-bit per 32, FP16 per 256" if fmt.is_k_quant else "FP16"
    element += " + min" if fmt.is_k_quant else ""
    return fmt.name, element, fmt.block_size, scale, fmt.bits_per_weight, 0


def _support_key(fmt: QuantScheme | GGUFType):
    """What `native_support` takes: a scheme as it is, a GGUF type by its preset name."""
    return fmt.name if isinstance(fmt, GGUFType) else fmt


def formats_table(formats=TABLE_FORMATS) -> list[FormatRow]:
    gpus = gpu_catalog()
    rows = []
    for fmt in formats:
        support = {g: native_support(g, _support_key(fmt)) for g in gpus}
        native = tuple(dict.fromkeys(g.architecture for g, s in support.items() if s == NATIVE))
        other = sorted({s for s in support.values() if s != NATIVE})
        rows.append(FormatRow(*_describe(fmt), native, ", ".join(other)))
    return rows


def table_takeaway(rows: list[FormatRow]) -> str:
    four = [r for r in rows if r.bits_per_weight < 5]
    native = [r.name for r in four if r.native_on]
    archs = sorted({a for r in four for a in r.native_on})
    low, high = min(r.bits_per_weight for r in four), max(r.bits_per_weight for r in four)
    return (
        f"The 4-bit formats all cost {low:g} to {high:g} bits per weight; only {' and '.join(native) or 'none'} "
        f"run natively, on {', '.join(archs) or 'no GPU here'}: everywhere else the codes are turned back into "
        "16-bit numbers inside the kernel, so the choice is about accuracy and which kernels exist."
    )


# -- the whole lesson ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FormatsLesson:
    name: str  # the weight's name
    shape: tuple[int, int]
    outlier: OutlierRow
    element: ElementLesson
    scales: ScaleLesson
    kquant: KQuantLesson | None  # None when the rows do not split into super-blocks of 256
    kquant_refusal: str  # why kquant is None
    table: list[FormatRow]


def formats_lesson(weight: Tensor, name: str = "") -> FormatsLesson:
    """Every section of the lesson on one weight (rows of a multiple of 32 values)."""
    rows = _rows(weight)
    try:
        kquant, refusal = kquant_lesson(rows), ""
    except ValueError as exc:
        kquant, refusal = None, str(exc)
    sections = outlier_row(rows), element_lesson(rows), scale_lesson(rows)
    return FormatsLesson(name, (rows.shape[0], rows.shape[1]), *sections, kquant, refusal, formats_table())
