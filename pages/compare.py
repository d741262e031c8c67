"""Compare generations: the reference and 1-3 quantized variants on one prompt, side by side.

Models run one after another with the same settings and seed, in a background job (ui.jobs) that other
clicks and other pages leave running; tokens stream into each column. Results live in session state
(ui.pages.compare.CompareRun), so reruns redraw them without generating again.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from engine.runtime.generation import MAX_NEW_TOKENS_CAP, GenerationError, GenerationSettings
from ui import cache, clickthrough, jobs, page
from ui.cache.variants import model_key
from ui.errors import show_error
from ui.pages import compare as view
from ui.pages import compare_figures as figures
from ui.pages import compare_variants as variants_view
from ui.widgets import NumberBoxes, prompt_area, prompt_problem

RUN_KEY = "compare_run"  # the CompareRun shown on this page
JOB_KEY = "compare_job"  # the background job generating it (ui.jobs)
TOP_P_HELP = "Nucleus mass; used when temperature > 0."
DEFAULT_PROMPT = "What is the capital of France? Answer in one sentence."
DEFAULT_VARIANTS = [view.MODEL_GRID, "W4", "KV4"]  # default model: its own 4-bit grid, a second rounding, KV
LEGEND = (
    "highlighted from the first token that differs from the reference (outlined); hover a token for details"
)


@dataclass(frozen=True)
class Request:
    prompt: str
    picked: list[str]  # option keys, in the order picked
    settings: tuple  # GenerationSettings' arguments: max new tokens, temperature, top-p, seed, chat
    clicked: bool  # Generate was pressed on this run
    problems: list[str]  # why it cannot run, in words (a number out of range, a prompt too long)


def settings_form(options: dict[str, view.VariantSpec]) -> Request:
    number = NumberBoxes()
    with st.form("compare_settings"):
        prompt = prompt_area("Prompt", DEFAULT_PROMPT, key="compare_prompt")
        picked = st.multiselect(
            "Variants (up to three)",
            list(options),
            default=[key for key in DEFAULT_VARIANTS if key in options],
            format_func=lambda key: options[key].label,
            max_selections=3,
            key="compare_variants",
            help="Weight schemes are round-to-nearest on every linear layer except the head, with a group "
            "size that divides this model's widths. KV variants keep the reference's weights and quantize its "
            "KV cache.",
        )
        cols = st.columns([2, 1, 1, 1, 1])
        max_new_tokens = cols[0].slider(
            "Max new tokens", 1, min(256, MAX_NEW_TOKENS_CAP), 48, key="compare_max_new_tokens"
        )
        temperature = number(
            cols[1], "Temperature", 0.0, 2.0, 0.0, 0.1, key="compare_temperature", help="0 = greedy (argmax)."
        )
        top_p = number(cols[2], "Top-p", 0.05, 1.0, 1.0, 0.05, key="compare_top_p", help=TOP_P_HELP)
        seed = number(cols[3], "Seed", 0, 2**31 - 1, 0, key="compare_seed", help="The same for every model.")
        chat = cols[4].checkbox("Chat template", value=True, key="compare_chat")
        clicked = st.form_submit_button(
            "Generate", type="primary", icon=":material/play_arrow:", key="compare_generate"
        )
    problems = [*number.problems, *filter(None, [prompt_problem(prompt)])]
    settings = () if problems else (int(max_new_tokens), float(temperature), float(top_p), int(seed), chat)
    return Request(prompt, picked, settings, clicked, problems)


def stop_and_shade():
    """Where the Stop button goes while a run generates (an empty slot otherwise), and whether to shade
    tokens by KL."""
    left, right = st.columns([1, 3], vertical_alignment="center")
    shade = right.checkbox(
        "Underline tokens by KL",
        key="compare_shade_kl",
        help=f"A red underline as strong as the token's KL(reference ‖ variant), full at {view.KL_FULL_SHADE} nats.",
    )
    return left.empty(), shade


def stop_button(slot) -> None:
    """Shown only while a generation runs; other clicks leave it running."""
    kept = "Stop the running generation; the tokens generated so far are kept."
    slot.button(
        "Stop", icon=":material/stop:", key="compare_stop", on_click=jobs.stop, args=(JOB_KEY,), help=kept
    )


def new_run(loaded, options: dict[str, view.VariantSpec], request: Request) -> view.CompareRun | None:
    """A fresh CompareRun for the request, or None (with the reason shown) when it cannot run."""
    try:
        if request.problems:
            raise GenerationError(" ".join(request.problems))
        if not request.picked:
            raise GenerationError("Pick at least one variant to compare with the reference.")
        settings = GenerationSettings(*request.settings)
        view.check_prompt(loaded.tokenizer, loaded.model, request.prompt, settings.chat)
    except GenerationError as exc:
        show_error(exc)
        return None
    columns = [view.ColumnRun(f"Reference ({loaded.dtype} on {loaded.device})", None)]
    columns += [view.ColumnRun(options[key].label, options[key]) for key in request.picked]
    return view.CompareRun(loaded.source.label, request.prompt, settings, columns, model_key=model_key())


def start_run(run: view.CompareRun, loaded, built_in_lab: dict) -> None:
    """Generate `run` in the background (`ui.jobs`); refused, in words, while one still runs."""
    build = variants_view.builder(loaded, built_in_lab)
    try:
        jobs.start(JOB_KEY, lambda job: view.generate_columns(job, run, build, loaded), "generation")
    except jobs.JobRunning as exc:
        st.warning(str(exc), icon=":material/hourglass_top:")
    else:
        st.session_state[RUN_KEY] = run  # kept per session, as finished runs are


def collect_run(run: view.CompareRun, loaded) -> None:
    """The job ended: say why if it failed, and keep whatever it produced."""
    job = jobs.finished(JOB_KEY)
    if job is not None and job.error is not None:
        show_error(job.error)
    if not run.finished:  # stopped while a variant was built, or failed
        view.mark_interrupted(run, loaded.tokenizer)


def redraw_run(run: view.CompareRun, shade_kl: bool) -> None:
    short = run.prompt if len(run.prompt) <= 80 else run.prompt[:80] + "…"
    st.caption(f"Model: {run.model_label} · prompt: “{short}” · {LEGEND}")
    if run.interrupted:
        st.info(
            "The last run was stopped; its columns show the tokens generated so far.",
            icon=":material/stop_circle:",
        )
    for col, column in zip(st.columns(len(run.columns), border=True), run.columns, strict=True):
        col.markdown(f"**{column.label}**")
        view.draw_column(column, run, shade_kl, where=col)


def summary_table(run: view.CompareRun) -> None:
    rows = figures.summary_rows(run)
    if rows:
        st.dataframe(
            rows,
            hide_index=True,
            width="stretch",
            column_config={
                "prefill tok/s": st.column_config.NumberColumn(format="%.0f"),
                "decode tok/s": st.column_config.NumberColumn(format="%.1f"),
                "first token ms": st.column_config.NumberColumn(format="%.0f"),
                "packed MiB": st.column_config.NumberColumn(format="%.1f", help=figures.PACKED_HELP),
                "held MiB": st.column_config.NumberColumn(format="%.1f", help=figures.HELD_HELP),
                "agreement": st.column_config.NumberColumn(format="percent"),
                "mean KL (nats)": st.column_config.NumberColumn(format="%.4f"),
            },
        )
    st.caption(
        "Agreement counts identical tokens position by position; after a divergence the texts usually drift "
        "apart, so the teacher-forced numbers (mean KL, top-1 agreement on the same prefix) say more about the "
        "quantization. Packed memory is what the format stores; held memory is what this process keeps (a "
        "fake-quantized variant holds its weights dequantized)."
    )


def main() -> None:
    page.start(
        "Compare generations",
        "Does the quantized model still say the same thing? The reference and up to three variants generate "
        "from one prompt with the same settings; hover a token for its probability under both models and the KL.",
        scheme_use="the “sidebar scheme” variant, the whole model quantized with it by round-to-nearest.",
    )
    clickthrough.origin_note(clickthrough.COMPARE_PAGE)
    loaded = cache.current_model_or_stop()
    view.origin_note(loaded)
    options, built_in_lab = variants_view.variant_options(loaded)
    request = settings_form(options)
    stop_slot, shade_kl = stop_and_shade()
    if request.clicked and (run := new_run(loaded, options, request)) is not None:
        start_run(run, loaded, built_in_lab)
    run, job = st.session_state.get(RUN_KEY), jobs.current(JOB_KEY)
    if job is not None and job.running:
        stop_button(stop_slot)  # the run goes on through other clicks; its columns redraw on their own
        st.caption(f"Model: {run.model_label} · {LEGEND}")
        jobs.watch(JOB_KEY, lambda job: view.draw_running(job, run, shade_kl))
    elif run is not None:
        collect_run(run, loaded)
        redraw_run(run, shade_kl)
        summary_table(run)
    else:
        st.info("Pick variants and press **Generate**.", icon=":material/compare:")


main()
