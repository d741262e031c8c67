"""The guided tour (issue 21): a saved sequence of views through the default model, as data.

Each step opens one page with its widgets preselected through the page's link parameters (the same names a
shared link uses, declared in `ui.link_params`) and says one sentence about what to look at. A step never
presses a button: where a view needs a run (collecting statistics, a method run, a generation), the
narration says which button to press. `ui.presenter` draws the banner and moves between steps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlencode

from engine.evaluation.study import QUICK_GRID

TOUR_PARAM = "tour"  # the step number in the URL, from 1
PRESENT_PARAM = "present"  # "1": presenter mode


@dataclass(frozen=True)
class Step:
    """One view of the tour."""

    page: str  # the page script, as st.switch_page takes it: "pages/grid.py"
    title: str  # a short heading for the step
    narration: str  # one sentence: what to look at
    params: dict[str, str] = field(default_factory=dict)  # link parameters: widget key -> its URL text


# The page title each page passes to `ui.page.start` (what `presenter.apply` is called with).
PAGE_TITLES = {
    "pages/overview.py": "Overview",
    "pages/grid.py": "Quantization grid",
    "pages/outliers.py": "Outliers",
    "pages/methods.py": "Methods lab",
    "pages/planner.py": "Plan a recipe",
    "pages/compare.py": "Compare generations",
    "pages/evaluate.py": "Evaluate",
    "pages/memory.py": "Memory sizing",
    "pages/speed.py": "Speed",
    "pages/learn.py": "Learn",
}

STEPS: tuple[Step, ...] = (
    Step(
        "pages/grid.py",
        "One weight, one scheme",
        "Layer 11's MLP down-projection under int4 with groups of 64: every red line is a value a group's 16 "
        "codes can hold, and each weight comes back as the nearest line.",
        {
            "scheme": "int4 g64",
            "grid_source": "Model weight",
            "grid_layer": "layer 11",
            "grid_weight": "model.layers.11.mlp.down_proj.weight",
        },
    ),
    Step(
        "pages/grid.py",
        "One outlier stretches the scale",
        "A synthetic tensor with one planted outlier under one scale for the whole tensor: the outlier sets "
        "the scale, so almost every ordinary value rounds to the same few levels.",
        {
            "scheme": "int4 tensor",
            "grid_source": "Synthetic",
            "grid_syn_outliers": "1",
            "grid_syn_magnitude": "50",
        },
    ),
    Step(
        "pages/outliers.py",
        "Where the outliers live",
        "Press Collect statistics: a handful of channels in the inputs of the linear layers are far larger "
        "than the rest, and the same channels stand out layer after layer.",
        {"outliers_tab": "Activations"},
    ),
    Step(
        "pages/outliers.py",
        "Super weights",
        "A few single weights matter more than millions of others: press Find super weights, then zero them "
        "and watch the perplexity explode.",
        {"outliers_tab": "Super weights"},
    ),
    Step(
        "pages/methods.py",
        "Rounding, smarter",
        "Round-to-nearest against GPTQ and AWQ at 4 bits with groups of 64: press Run and compare the "
        "perplexity each method keeps and its error layer by layer.",
        {"methods_pick": "RTN,GPTQ,AWQ", "methods_bits": "4", "methods_group": "64"},
    ),
    Step(
        "pages/compare.py",
        "Does it still talk?",
        "The same prompt through the reference and quantized variants, greedy: press Generate and see where "
        "their words part, shaded by how far each token's distribution moved.",
        {"compare_variants": "W4,W3,KV4"},
    ),
    Step(
        "pages/evaluate.py",
        "Measure, don't guess",
        "Press Run grid: perplexity and the KL divergence from the reference for a grid of schemes "
        "show which bits and group sizes are safe and where quality collapses.",
        {"evaluate_grid": f"Quick ({len(QUICK_GRID)} cells)"},
    ),
    Step(
        "pages/memory.py",
        "Will a 120B model fit?",
        "gpt-oss-120b as it ships, its experts in MXFP4 and the rest in bf16, priced part by part from its "
        "config alone: the experts are almost all of the bytes.",
        {
            "memory_catalog": "gpt-oss-120b",
            "memory_recipe_choice": "gpt-oss",
            "memory_tab": "Checkpoint layout",
        },
    ),
    Step(
        "pages/speed.py",
        "Is it faster?",
        "Press Run microbenchmarks: at batch 1 a layer reads each weight once per token, so fewer bits should "
        "mean faster calls, but only where the kernel unpacks them cheaply; the bandwidth chart shows how "
        "close each format gets to the memory's limit.",
        {"speed_formats": "bf16,W8A16,W4A16", "speed_batches": "1,4,16"},
    ),
    Step(
        "pages/learn.py",
        "Why rotation helps",
        "Back to the lesson: a rotation spreads an outlier's energy over every channel, so one scale fits "
        "them all and the 4-bit error falls.",
        {"learn_tab": "Outliers and rotation"},
    ),
)


def step(number: int) -> Step:
    """Step `number` (from 1); IndexError when the tour has no such step."""
    if not 1 <= number <= len(STEPS):
        raise IndexError(f"the tour has {len(STEPS)} steps")
    return STEPS[number - 1]


def step_params(number: int, present: bool) -> dict[str, str]:
    """The query parameters that open step `number`: its page's selections, the step and presenter mode."""
    params = dict(step(number).params) | {TOUR_PARAM: str(number)}
    if present:
        params[PRESENT_PARAM] = "1"
    return params


def step_link(number: int, present: bool = True) -> str:
    """A relative link to step `number`, e.g. for docs/teaching.md: "/grid?scheme=int4+g64&...&tour=1"."""
    path = "/" + step(number).page.removeprefix("pages/").removesuffix(".py")
    return f"{path}?{urlencode(step_params(number, present))}"
