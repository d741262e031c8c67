"""Helpers for the Speed page: its texts, the requests its forms make, and running the engine's benchmarks
into session state (charts and tables: ui/pages/speed_charts.py).

Results are kept per browser session (`st.session_state`), never cached across sessions: a timing is a
measurement of one moment on one machine, and the page says which (device, threads, load average).
The page's multiselects hold names; `formats_of` / `variants_of` turn them into engine.recipes objects
here, at the edge, and the engine works on the recipes.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field

import streamlit as st
import torch

from engine import kernels, speed
from engine.recipes import Recipe
from ui.errors import show_error
from ui.pages import methods as methods_view
from ui.progress import progress_bar

KERNELS = "speed_kernel_run"  # session-state key: the last KernelRun
DECODE = "speed_decode_run"  # session-state key: the last DecodeRun
LOOP_HELP = (
    f"**{speed.DYNAMIC_LOOP}**: our plain token loop (engine.runtime.generation) on transformers' growing cache, "
    f"what the rest of the app runs. **{speed.HF_LOOP}**: transformers' own `generate` (greedy); its "
    f"prefill is timed as a 1-token generate. **{speed.STATIC_LOOP}**: engine.runtime.decode, a KV cache "
    f"preallocated to prompt + new tokens so every step has the same shapes. **{speed.COMPILED_LOOP}**: "
    "that step through `torch.compile`; on a GPU with `mode='reduce-overhead'` (CUDA graphs)."
)
DECODE_CPU_NOTE = (
    "On a CPU there are **no CUDA graphs**: the compiled step is inductor's C++ / OpenMP code, which "
    "removes Python overhead and fuses small ops but reads the same weights. Compiling takes a while "
    "per variant on a CPU; it runs in a warm-up, is shown in **compile s**, and is never "
    "counted in tokens/s. The loaded model keeps its compiled step for the next run with the same "
    "prompt and token counts; packed variants are rebuilt each run and compile again (faster, from "
    "inductor's on-disk cache)."
)
DECODE_GPU_NOTE = (
    "The compiled step runs as a **CUDA graph** (`torch.compile(mode='reduce-overhead')`): one launch "
    "per token, so batch-1 decode is bound by reading the weights. Compiling and recording the graph "
    "happen in a warm-up, shown in **compile s** and never counted in tokens/s."
)
CPU_NOTE = (
    "These are **CPU kernels**: PyTorch's packed int4 / int8 matmuls (bf16 activations) and its int8 × int8 "
    "`_int_mm`, timed on this machine's cores, which other processes may share; bitsandbytes' NF4 and "
    "LLM.int8() layers run its CPU code for comparison. The GPU engine numbers "
    "(our Triton kernels, tinygemm, cuBLAS) need a GPU run: pick `cuda` in the sidebar on a machine with one."
)

TIMING_NOTE = (
    "**kernel µs** is the kernel alone, on input prepared once (on a GPU replayed from a CUDA graph, so no "
    "Python or launch cost is in it), while **call µs** is what a model's forward pays per call (Python, "
    "dispatch, casts and launches included): **overhead µs** is the difference, and GB/s, TFLOP/s and "
    "the speed-up chart use kernel time."
)
SHAPES_HELP = (
    "Llama-2-7B's weights are 4096×4096, 11008×4096 and 4096×11008 (out × in): about 50 times the "
    "default model's (SmolLM2-135M), so on a CPU the larger batches make a long run."
)
PICKED_SHAPES_HELP = (
    "The loaded model's linear shapes, and its output head (lm_head), left out by default: no method "
    "quantizes it, but in a small model it is the largest matmul of a decode step."
)
VARIANTS_HELP = (
    "fp/bf16 and the packed W8A16 / W4A16 / W8A8 round the loaded model to nearest; '+ int8 head' "
    "packs the output head too (every method keeps it 16-bit, but in a small model it is most of what a "
    "token reads); (bnb) are bitsandbytes' layers; (Methods lab) are the models built on the Methods "
    "page (GPTQ, AWQ, ...), packed from the integer codes each method chose."
)
SYNTHETIC_HELP = (
    "Any catalog architecture, built in bf16 with random weights on this device: how fast a model "
    "of that size would run here, without downloading it. Refused, with the numbers, when it does not "
    "fit in free memory."
)
ROOFLINE_NOTE = (
    "Roofline: every weight a decode step reads (the output head included, the embedding table only "
    "when tied to it) plus the KV cache at the mean context, divided by the measured copy bandwidth. "
    "Packed variants compute in bf16 inside each linear on CPU; the rest of the model keeps its dtype. "
    "The (bnb) variants are bitsandbytes' own layers as transformers builds them, with bitsandbytes' "
    "default CPU path (NF4 weights repacked for its AVX512-BF16 kernel where the CPU has it; LLM.int8 "
    "casts activations to fp16 and splits outlier columns at every call). "
    "Every loop is greedy, so a variant's loops should decode the same tokens (**same tokens**); "
    "**compile s** is the compiled loop's one-time warm-up, left out of its tokens/s."
)
CPU_COMPILE_NOTE = (
    "No CUDA graphs on a CPU: a compiled step here saves Python and small-op overhead only. "
    "The CUDA-graph numbers need a GPU (`cuda` in the sidebar)."
)


@dataclass
class Machine:
    device: str
    threads: int
    load_average: tuple[float, float, float] | None
    when: str

    @classmethod
    def now(cls, device: str) -> Machine:
        name = torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU, {os.cpu_count()} cores"
        load = os.getloadavg() if hasattr(os, "getloadavg") else None
        return cls(name, torch.get_num_threads(), load, dt.datetime.now().strftime("%Y-%m-%d %H:%M"))

    @property
    def caption(self) -> str:
        load = f", load average {self.load_average[0]:.1f}" if self.load_average else ""
        return f"Measured {self.when} on {self.device} ({self.threads} torch threads{load})."


@dataclass
class KernelRun:
    machine: Machine
    results: list[speed.KernelTiming] = field(default_factory=list)


@dataclass
class DecodeRun:
    machine: Machine
    model_label: str
    synthetic: bool
    results: list[speed.DecodeTiming] = field(default_factory=list)


@dataclass(frozen=True)
class KernelRequest:  # what the microbenchmark form asks for
    shapes: list[speed.LinearShape]
    batches: list[int]
    formats: list[Recipe]
    repeats: int


@dataclass(frozen=True)
class DecodeRequest:  # what the decode form asks for
    variants: list[Recipe | str]  # catalog recipes, or Methods-lab names (built by lab_builders)
    loops: list[str]
    prompt_tokens: int
    new_tokens: int
    synthetic: object | None = None  # a catalog model (engine.sizing.catalog) to build with random weights


def formats_of(names: list[str]) -> list[Recipe]:
    """The multiselect's format names as recipes (the UI edge: the engine takes recipes)."""
    return [speed.format_recipe(name) for name in names]


def variants_of(names: list[str], lab_runs: dict) -> list[Recipe | str]:
    """The variant names as recipes; Methods-lab names stay names (their builders go alongside)."""
    return [name if name in lab_runs else speed.variant_recipe(name) for name in names]


def default_variants(on_gpu: bool, options: list[str]) -> list[str]:
    defaults = ["bf16", "W8A16", "W4A16"] if on_gpu else ["fp32", "W8A16", "W4A16"]
    if on_gpu and "NF4 (bnb)" in options:  # the comparison: ours against bitsandbytes
        defaults.append("NF4 (bnb)")
    return defaults


def methods_lab_variants() -> tuple[dict, dict[str, str], dict[str, str]]:
    """This session's Methods-lab models: ({variant name: MethodRun} that run real kernels, {label: why
    not} for the rest, {label: why its model is gone} for runs whose model was freed or never kept).
    Checked from the layers' schemes; nothing is built here."""
    runnable, refused, missing = {}, {}, {}
    for run in list(methods_view.runs().values()):  # a Methods-lab job may add one meanwhile
        quantized, why = run.held()
        if quantized is None:
            missing[run.label] = why
            continue
        reason = speed.runnable_refusal(quantized.model)
        if reason is None:
            runnable[f"{run.label} (Methods lab)"] = run
        else:
            refused[run.label] = reason
    return runnable, refused, missing


def lab_builders(lab_runs: dict, variants: list[str]) -> tuple[dict, dict[str, str]]:
    """Builders for the picked Methods-lab variants (a packed or bitsandbytes copy, built when timed), and
    {variant name: why not} for those whose model was freed since the form was drawn."""
    builders, missing = {}, {}
    for name, run in lab_runs.items():
        if name not in variants:
            continue
        quantized, why = run.held()  # held until the benchmark ends, even if the store frees it meanwhile
        if quantized is None:
            missing[name] = why
        else:
            builders[name] = lambda model=quantized.model: speed.runnable_copy(model)
    return builders, missing


def device_note(device: str) -> None:
    if device.startswith("cuda"):
        st.caption(
            f"Device: {torch.cuda.get_device_name()}. Kernel time is a CUDA-graph replay timed with CUDA "
            "events (CUDA events around back-to-back calls where an op refuses capture); call time is the "
            "wall time of back-to-back forwards, the GPU synchronized once per round."
        )
    else:
        st.info(CPU_NOTE, icon=":material/memory:")


CHOICE_NOTE = (
    "Several kernels can multiply one packed layout (a CPU: aten's packed int8 op or dequantize-then-matmul; "
    "a GPU: our Triton GEMV and GEMM, tinygemm, aten's int8 op, dequantize-then-cuBLAS). None is preferred "
    "by hand: the first time a format meets a batch size on this device, every candidate is timed on a "
    "probe layer and checked against the reference, and the fastest correct one runs from then on (kept "
    "in a file, so a restart does not time them again). A refused candidate says why."
)


def kernel_choice_table(device: str) -> None:
    """What engine.kernels.choice measured on this device: per format, layout and batch bucket, each
    candidate's time and the one chosen (layouts too, where more than one stores a format)."""
    rows = kernels.choice.measured_rows("cuda" if device.startswith("cuda") else "cpu")
    if not rows:
        return
    with st.expander("Which kernel runs, and why: measured on this device"):
        st.caption(CHOICE_NOTE)
        table = [
            {
                "format": r["format"],
                "choosing": r["choice"],
                "layout": r["layout"],
                "group": r["group"],
                "computes in": r["dtype"],
                "rows (bucket)": r["rows"],
                "candidate": r["candidate"],
                "µs": None if r["µs"] is None else round(r["µs"], 1),
                "chosen": "✓" if r["chosen"] else "",
                "why not": r["note"],
                "probe layer": r["probe"],
            }
            for r in rows
        ]
        st.dataframe(table, hide_index=True)


def kernel_fallback_notes(where) -> None:
    """Say which fast kernels failed in this process and why: their layers run the reference kernel now,
    so every timing that follows is the reference's (engine.kernels.dispatch). `where`: a container near
    the top, filled after this run's benchmarks so a kernel that failed just now is named at once."""
    for message in kernels.failures():
        where.warning(
            f"{message} Layers that would use it run the reference kernel (dequantize + matmul) from now on, "
            "so their results stay right but their timings are the reference's.",
            icon=":material/report:",
        )


def shape_choices(model, source: str) -> dict[str, speed.LinearShape]:
    if source == "Llama-2-7B shapes":
        names = (("q/k/v/o_proj",), ("gate/up_proj",), ("down_proj",))
        shapes = [
            speed.LinearShape(o, i, 1, n) for (o, i), n in zip(speed.LLAMA_2_7B_SHAPES, names, strict=True)
        ]
    else:
        head = speed.output_head_shape(model)
        shapes = speed.model_linear_shapes(model) + ([head] if head else [])
    return {shape.label: shape for shape in shapes}


def default_shapes(choices: dict[str, speed.LinearShape]) -> list[str]:
    """Every shape but the output head: it is large, and no method quantizes it unless asked to."""
    return [label for label, shape in choices.items() if shape.names != ("lm_head",)]


# -- running ----------------------------------------------------------------------------------------------


def run_kernels(request: KernelRequest, device: str) -> None:
    update, clear = progress_bar()
    try:
        results = speed.microbenchmark(
            request.shapes,
            sorted(request.batches),
            request.formats,
            device=device,
            repeats=request.repeats,
            warmup=max(2, request.repeats // 5),
            progress=update,
        )
        st.session_state[KERNELS] = KernelRun(Machine.now(device), results)
    except Exception as exc:  # a refused or failed run leaves the previous results on screen
        show_error(exc, prefix="The microbenchmark stopped: ")
    finally:
        clear()


def run_decode(
    model,
    tokenizer,
    variants,
    prompt_tokens: int,
    new_tokens: int,
    label: str,
    synthetic: bool,
    loops=(speed.DYNAMIC_LOOP,),
    builders=None,
) -> None:
    device = str(next(model.parameters()).device)
    update, clear = progress_bar()
    try:
        results = speed.decode_comparison(
            model,
            tokenizer,
            variants,
            prompt_tokens=prompt_tokens,
            new_tokens=new_tokens,
            progress=update,
            loops=list(loops),
            builders=builders,
        )
        st.session_state[DECODE] = DecodeRun(Machine.now(device), label, synthetic, results)
    except Exception as exc:
        show_error(exc, prefix="The decode benchmark stopped: ")
    finally:
        clear()


def run_decode_request(request: DecodeRequest, loaded, lab_runs: dict) -> None:
    """Run a decode request on the loaded model, or on a synthetic model built (and freed) for it."""
    device = loaded.device
    if request.synthetic is None:
        names = [v for v in request.variants if isinstance(v, str)]
        builders, missing = lab_builders(lab_runs, names)
        for name, why in missing.items():
            st.info(f"**{name}** was left out: {why}", icon=":material/memory:")
        variants = [v for v in request.variants if not (isinstance(v, str) and v in missing)]
        if not variants:
            return
        run_decode(
            loaded.model,
            loaded.tokenizer,
            variants,
            request.prompt_tokens,
            request.new_tokens,
            loaded.source.label,
            False,
            request.loops,
            builders=builders,
        )
        return
    entry = request.synthetic
    try:
        with st.spinner(f"Building {entry.name} with random weights on {device}…"):
            model = speed.synthetic_model(entry.config(), dtype=speed.DTYPES["bf16"], device=device)
    except MemoryError as exc:
        show_error(exc)
        st.stop()
    tokenizer = speed.SyntheticTokenizer(model.config.vocab_size)
    run_decode(
        model,
        tokenizer,
        request.variants,
        request.prompt_tokens,
        request.new_tokens,
        entry.name,
        True,
        request.loops,
    )
    del model
