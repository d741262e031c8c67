"""Reusable widgets. `scheme_picker` turns a handful of controls into a validated QuantScheme;
`NumberBoxes` and `prompt_area` replace Streamlit's own limits (which the browser enforces silently) with
limits checked here and said in words."""

from __future__ import annotations

import streamlit as st

from engine.quant.elements import element
from engine.quant.group_sizes import GroupSizeFit
from engine.quant.schemes import FORMATS, GRANULARITIES, QuantScheme
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
PICKER_FIELDS = ("format", "bits", "range", "granularity", "group", "clip", "scale_dtype", "dq")
RANGE_CHOICES = {
    "symmetric": "symmetric (absmax)",
    "asymmetric (int zero)": "asymmetric, integer zero point",
    "asymmetric (float zero)": "asymmetric, float minimum (Q4_1)",
}
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
) -> QuantScheme | None:
    """Controls for every QuantScheme field; returns the scheme, or None after showing why it is invalid.

    `fit`: the group sizes to offer (engine.quant.group_sizes for the loaded model; all the usual sizes when
    None). The widgets keep their values through pages that do not draw them (`state.seed` / `state.keep`).
    """
    fit = fit or GroupSizeFit(CANDIDATE_GROUP_SIZES)
    keys = {name: f"{prefix}_{name}" for name in PICKER_FIELDS}
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
        help="Who shares one scale: the whole tensor, each row (output channel / token), or each group of a row.",
    )
    group_size = None
    if granularity == "group":
        group_size = _group_size_ui(keys["group"], where, fit, default.group_size or 64)
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
        scales = SCALE_DTYPES + (MICROSCALING_SCALES if element(fmt).family == "float" else [])
        state.seed(keys["scale_dtype"], default.scale_dtype, scales)
        scale_dtype = st.selectbox(
            "Scale dtype",
            scales,
            format_func=lambda name: SCALE_WORDS.get(name, name),
            key=keys["scale_dtype"],
            help=SCALE_HELP,
        )
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
