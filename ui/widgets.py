"""Reusable widgets. `scheme_picker` turns a handful of controls into a validated QuantScheme (or a named
format: an MX / NVFP4 preset, one of llama.cpp's GGUF block types);
`NumberBoxes` and `prompt_area` replace Streamlit's own limits (which the browser enforces silently) with
limits checked here and said in words."""

from __future__ import annotations

import streamlit as st

from engine.quant.elements import element
from engine.quant.gguf import GGUF_TYPES, GGUFType
from engine.quant.group_sizes import GroupSizeFit
from engine.quant.schemes import FORMATS, GRANULARITIES, QuantScheme, bits_per_weight, parse_label
from engine.quant.shapes import CANDIDATE_GROUP_SIZES
from ui import state
from ui.errors import show_error

DEFAULT_SCHEME = QuantScheme(4, "int", True, "group", 64)  # not Q4_1's asym g32 grid: no fake zero error
INT_BITS = [2, 3, 4, 5, 6, 7, 8]
SCALE_DTYPES = ["float16", "bfloat16", "float32"]
# offered for the small float elements only (the scheme refuses them elsewhere)
MICROSCALING_SCALES = ["e8m0", "e8m0_rceil", "e4m3"]
SCALE_WORDS = {
    "e8m0": "e8m0: power of two (MX)",
    "e8m0_rceil": "e8m0, rounded up (MX RCEIL)",
    "e4m3": "e4m3 per block × fp32 per tensor (NVFP4)",
}
# the picker's widget keys are "<prefix>_<field>"
PICKER_FIELDS = (
    "start",
    "rceil",
    "tile",
    "format",
    "bits",
    "range",
    "granularity",
    "group",
    "clip",
    "scale_dtype",
    "dq",
)
RANGE_CHOICES = {
    "symmetric": "symmetric (absmax)",
    "asymmetric (int zero)": "asymmetric, integer zero point",
    "asymmetric (float zero)": "asymmetric, float minimum (Q4_1)",
}
TILE_SIZES = [64, 128, 256]
BUILD = "build"  # "Start from" choice: the fields below
PRESET_NAMES = {  # schemes.PRESETS label (or a named scheme's label) -> how the picker names it
    "mxfp4": "MXFP4 (E2M1 × E8M0 per 32)",
    "nvfp4": "NVFP4 (E2M1 × E4M3 per 16 × FP32)",
    "mxfp6_e2m3": "MXFP6 E2M3",
    "mxfp6_e3m2": "MXFP6 E3M2",
    "mxfp8_e4m3": "MXFP8 E4M3",
    "mxfp8_e5m2": "MXFP8 E5M2",
    "fp8_e4m3 block128": "FP8 in 128×128 blocks (DeepSeek-V3)",
}
GGUF_ORDER = ("Q8_0", "Q6_K", "Q5_K", "Q5_1", "Q5_0", "Q4_K", "Q4_1", "Q4_0", "Q3_K", "Q2_K")
START_CHOICES = (BUILD, *PRESET_NAMES, *GGUF_ORDER)


def start_name(choice: str) -> str:
    if choice == BUILD:
        return "your own (the fields below)"
    if choice in GGUF_TYPES:
        return f"GGUF {choice} (llama.cpp, {GGUF_TYPES[choice].bits_per_weight:g} bits)"
    return PRESET_NAMES.get(choice, choice)


MAX_PROMPT_CHARS = 20_000  # a prompt box's limit; longer prompts are refused with a message, never cut


class NumberBoxes:
    """Number inputs without Streamlit's min/max, with the range checked here instead.

    Given a min and max, Streamlit's box refuses an out-of-range number in the browser: it turns red, the
    reason is only a tooltip, and the script never sees the number (a form's button then runs the old
    value or nothing). These boxes take any number; `problems` says, in words, which are out of range, for
    the page to show next to its button and to refuse to run.
    """

    def __init__(self) -> None:
        self.problems: list[str] = []

    def __call__(
        self,
        where,
        label: str,
        low,
        high,
        value,
        step=None,
        *,
        key: str,
        help: str = "",
        name="",
        format=None,
    ):
        """A number box for [low, high] (`name`: how messages call it, default its label; `format`: a printf
        format such as "%.3f" where Streamlit's two decimals would round what was typed)."""
        number = where.number_input(
            label,
            value=value,
            step=step,
            key=key,
            format=format,
            help=f"From {low:,} to {high:,}. {help}".strip(),
        )
        if number is None or not low <= number <= high:
            shown = "empty" if number is None else f"{number:,}"
            self.problems.append(f"{name or label} must be from {low:,} to {high:,} (it is {shown}).")
        return number

    def show(self, where=st) -> bool:
        """Each problem as an error; True when there was one."""
        for problem in self.problems:
            where.error(problem, icon=":material/error:")
        return bool(self.problems)


def prompt_area(label: str, value: str, key: str | None = None) -> str:
    """A prompt box without `max_chars` (Streamlit's box silently drops a paste that would pass it, keeping
    the old text); check what it returns with `prompt_problem`."""
    return st.text_area(label, value, height=80, key=key, help=f"Up to {MAX_PROMPT_CHARS:,} characters.")


def prompt_problem(prompt: str) -> str | None:
    """Why a prompt is refused before any model runs (too long), or None."""
    if len(prompt) > MAX_PROMPT_CHARS:
        return (
            f"The prompt is {len(prompt):,} characters long; the limit is {MAX_PROMPT_CHARS:,}. Shorten it "
            "and generate again."
        )
    return None


FORMAT_HELP = {
    "int": "Uniform integer grid (absmax or min/max with a zero point).",
    "nf4": "QLoRA's NormalFloat4: 16 levels at normal quantiles, scaled by the block absmax.",
    "fp4": "bitsandbytes' FP4 (bnb_fp4): its own 16 levels, largest 12, scaled by the block absmax.",
    "fp8_e4m3": "8-bit float, 4 exponent + 3 mantissa bits (more precision, range ±448).",
    "fp8_e5m2": "8-bit float, 5 exponent + 2 mantissa bits (more range, ±57344).",
    "fp4_e2m1": "OCP FP4 element of MXFP4 / NVFP4: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}.",
    "fp6_e2m3": "OCP FP6 element, 2 exponent + 3 mantissa bits (largest 7.5).",
    "fp6_e3m2": "OCP FP6 element, 3 exponent + 2 mantissa bits (largest 28).",
}
FORMAT_NAMES = {"fp4": "bnb_fp4 (bitsandbytes)"}  # how the picker shows a format name
SCALE_HELP = (
    "How each scale is stored. For the float elements also: e8m0, a power of two per block (MX formats: "
    "fp4_e2m1 with groups of 32 is MXFP4), rounded down as the OCP spec does or up (RCEIL); e4m3, an 8-bit "
    "float per block times one fp32 per tensor (fp4_e2m1 with groups of 16 is NVFP4)."
)


def _group_size_ui(key: str, where, fit: GroupSizeFit, default: int) -> int:
    """The group-size slider over the sizes that fit the loaded model, with why the others are absent."""
    sizes = list(fit.sizes)
    moved = state.seed(key, default, sizes)
    if len(sizes) == 1:  # a one-stop slider cannot be drawn
        where.caption(f"Group size: {sizes[0]}, the only size that fits this model.")
        return sizes[0]
    if moved is not None:
        where.caption(f"Group size {moved} does not fit this model: the nearest size that does is picked.")
    size = where.select_slider(
        "Group size",
        sizes,
        key=key,
        help="Values per scale along a row. Offered: the sizes that divide the input width of every linear "
        "layer of the loaded model, so no layer is left with a partial group.",
    )
    where.caption(fit.note() or "No model layers to fit yet: every usual size is offered.")
    return size


def scheme_picker(
    prefix: str, where=st, default: QuantScheme = DEFAULT_SCHEME, fit: GroupSizeFit | None = None
) -> QuantScheme | GGUFType | None:
    """A named format, or controls for every QuantScheme field; returns the scheme (a GGUFType for
    llama.cpp's block types), or None after showing why it is invalid.

    `fit`: the group sizes to offer (engine.quant.group_sizes for the loaded model; all the usual sizes when
    None). The widgets keep their values through pages that do not draw them (`state.seed` / `state.keep`).
    """
    keys = {name: f"{prefix}_{name}" for name in PICKER_FIELDS}
    state.seed(keys["start"], BUILD, START_CHOICES)
    start = where.selectbox(
        "Start from",
        START_CHOICES,
        format_func=start_name,
        key=keys["start"],
        help="A named format as the hardware and llama.cpp define it (MX and NVFP4 blocks; llama.cpp's GGUF "
        "block types, quantized as llama.cpp does), or your own from the fields below.",
    )
    if start in GGUF_TYPES:
        state.keep(*keys.values())
        return _gguf_choice(GGUF_TYPES[start], where, fit)
    if start in PRESET_NAMES:
        return _preset_choice(start, keys, where)
    return _build_scheme(keys, where, default, fit)


def picker_values(scheme: QuantScheme | GGUFType, prefix: str) -> dict[str, object]:
    """The widget values under which `scheme_picker(prefix)` returns `scheme` (for a link that names a
    scheme, ui.links); ValueError when the picker cannot show it (bits, clip, tile or scale it lacks)."""
    keys = {name: f"{prefix}_{name}" for name in PICKER_FIELDS}
    if isinstance(scheme, GGUFType):
        if scheme.name not in GGUF_ORDER:
            raise ValueError(f"the picker does not offer {scheme.name}")
        return {keys["start"]: scheme.name}
    rceil = scheme.scale_dtype == "e8m0_rceil"
    named = scheme.label.removesuffix(" rceil") if rceil else scheme.label
    if named in PRESET_NAMES:
        return {keys["start"]: named, keys["rceil"]: rceil}
    values: dict[str, object] = {keys["start"]: BUILD, keys["format"]: scheme.format}
    if scheme.format == "int":
        if scheme.bits not in INT_BITS:
            raise ValueError(f"the picker offers {INT_BITS[0]} to {INT_BITS[-1]} integer bits")
        values[keys["bits"]] = scheme.bits
        values[keys["range"]] = "symmetric" if scheme.symmetric else f"asymmetric ({scheme.zero_kind} zero)"
    values[keys["granularity"]] = scheme.granularity
    if scheme.granularity == "group":
        if scheme.group_size not in CANDIDATE_GROUP_SIZES:
            raise ValueError(f"the picker offers groups of {', '.join(map(str, CANDIDATE_GROUP_SIZES))}")
        values[keys["group"]] = scheme.group_size
    elif scheme.granularity == "block":
        if scheme.group_size not in TILE_SIZES:
            raise ValueError(f"the picker offers tiles of {', '.join(map(str, TILE_SIZES))}")
        values[keys["tile"]] = scheme.group_size
        if scheme.scale_dtype != "float32":
            raise ValueError("the picker's tiles take float32 scales")
    if not 0.5 <= scheme.clip_ratio <= 1.0:
        raise ValueError("the picker's clip ratio goes from 0.5 to 1.0")
    values[keys["clip"]] = scheme.clip_ratio
    values[keys["scale_dtype"]] = scheme.scale_dtype
    values[keys["dq"]] = scheme.double_quant
    return values


def _gguf_choice(t: GGUFType, where, fit: GroupSizeFit | None) -> GGUFType:
    where.caption(f"**{t.name}**: {t.description}; {t.bits_per_weight:g} bits per weight, scales included.")
    widths = sorted(fit.widths) if fit is not None else []
    misfits = [width for width in widths if width % t.block_size]
    if misfits:
        rows = ", ".join(f"{width:,}" for width in misfits)
        where.caption(
            f"Rows of {rows} values are not a multiple of {t.block_size}: llama.cpp stores those tensors in "
            "a fallback type (the grid page names it)."
        )
    return t


def _preset_choice(name: str, keys: dict[str, str], where) -> QuantScheme:
    scheme = parse_label(name)
    size = scheme.group_size
    blocks = (
        f"{size}×{size} tiles with a float32 scale each"
        if scheme.granularity == "block"
        else f"blocks of {size}"
    )
    where.caption(f"**{name}**: {scheme.element.name} elements in {blocks}, {bits_per_weight_words(scheme)}.")
    if scheme.scale_dtype == "e8m0":
        state.seed(keys["rceil"], False)
        if where.checkbox(
            "Round the scale up (RCEIL)",
            key=keys["rceil"],
            help="The OCP spec rounds the power-of-two scale down (a block's largest values may saturate); "
            "NVIDIA's MX recipe rounds it up (no saturation, coarser steps).",
        ):
            scheme = parse_label(f"{name} rceil")
    state.keep(*keys.values())
    return scheme


def bits_per_weight_words(scheme: QuantScheme) -> str:
    extra = " plus 32 per tensor" if scheme.two_level else ""
    return f"{bits_per_weight(scheme):g} bits per weight{extra}"


def _build_scheme(keys: dict[str, str], where, default: QuantScheme, fit: GroupSizeFit | None):
    fit = fit or GroupSizeFit(CANDIDATE_GROUP_SIZES)
    state.seed(keys["format"], default.format, FORMATS)
    fmt = where.selectbox(
        "Format",
        FORMATS,
        format_func=lambda name: FORMAT_NAMES.get(name, name),
        key=keys["format"],
        help=" ".join(f"**{name}**: {text}" for name, text in FORMAT_HELP.items()),
    )
    zero_kind = "int"
    if fmt == "int":
        state.seed(keys["bits"], default.bits, INT_BITS)
        bits = where.select_slider("Bits", INT_BITS, key=keys["bits"])
        default_range = "symmetric" if default.symmetric else f"asymmetric ({default.zero_kind} zero)"
        state.seed(keys["range"], default_range, list(RANGE_CHOICES))
        value_range = where.radio(
            "Range",
            list(RANGE_CHOICES),
            format_func=RANGE_CHOICES.get,
            key=keys["range"],
            help="Symmetric: ±absmax, no zero point. Asymmetric: min..max with an integer zero point (0 stays "
            "exact; torchao, GPTQ) or with a float minimum offset (min and max exact; llama.cpp Q4_1).",
        )
        symmetric = value_range == "symmetric"
        zero_kind = "float" if value_range == "asymmetric (float zero)" else "int"
    else:
        bits, symmetric = element(fmt).bits[0], True  # codebooks and float8 have one width
    state.seed(keys["granularity"], default.granularity, GRANULARITIES)
    granularity = where.radio(
        "Granularity",
        GRANULARITIES,
        horizontal=True,
        key=keys["granularity"],
        help="Who shares one scale: the whole tensor, each row (output channel / token), each group of a row, "
        "or each 2-D block of a weight (DeepSeek-V3's FP8: 128×128 tiles; activations then take 1×128 groups "
        "per token).",
    )
    group_size = None
    if granularity == "group":
        group_size = _group_size_ui(keys["group"], where, fit, default.group_size or 64)
    elif granularity == "block":
        state.seed(keys["tile"], 128, TILE_SIZES)
        group_size = where.select_slider(
            "Tile side",
            TILE_SIZES,
            key=keys["tile"],
            help="Rows and columns of one block; partial edge tiles.",
        )
    with where.expander("Advanced"):
        state.seed(keys["clip"], default.clip_ratio)
        clip_ratio = st.slider(
            "Clip ratio",
            0.5,
            1.0,
            step=0.01,
            key=keys["clip"],
            help="Shrink the range before scaling: clips outliers, gains resolution for the rest.",
        )
        if granularity == "block":  # one float32 per tile, as DeepSeek-V3 stores them
            scales = ["float32"]
        else:
            scales = SCALE_DTYPES + (MICROSCALING_SCALES if element(fmt).family == "float" else [])
        state.seed(keys["scale_dtype"], default.scale_dtype, scales)
        scale_dtype = st.selectbox(
            "Scale dtype",
            scales,
            format_func=lambda name: SCALE_WORDS.get(name, name),
            key=keys["scale_dtype"],
            help=SCALE_HELP,
        )
        double_quant = False
        if granularity != "block":
            state.seed(keys["dq"], default.double_quant)
            double_quant = st.checkbox("Double quantization of scales (QLoRA)", key=keys["dq"])
    state.keep(*keys.values())
    try:
        return QuantScheme(
            bits, fmt, symmetric, granularity, group_size, clip_ratio, scale_dtype, double_quant, zero_kind
        )
    except ValueError as exc:
        show_error(exc, where=where, prefix="Impossible scheme: ")
        return None
