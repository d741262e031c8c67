"""The Speed page's context sweep: prefill and decode speed and memory over context lengths, measured per
variant beside our estimate (engine.speed.sweep), the way AutoAWQ's benchmark script reports a model.

The rounds are kept in `st.session_state` as each one finishes, so a rerun shows them and a Stop (which
reruns the page, ending the run) keeps the rounds already done."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from engine import speed
from engine.speed import sweep as sweeps
from ui.charts import frame
from ui.errors import show_error
from ui.pages import speed as speed_view
from ui.pages.speed_charts import FORMAT_COLORS
from ui.progress import progress_bar
from ui.widgets import NumberBoxes

SWEEP = "speed_sweep_results"  # session-state key: the last SweepRun
CONTEXT_OPTIONS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
MIB = 1024**2
REFERENCE_LABEL = "reference (loaded model)"
GENERATOR_LABELS = {"Our loop": sweeps.OUR_LOOP, "Transformers generate": sweeps.HF_GENERATE}
INTRO = (
    "One round per context length: a prompt of exactly that many tokens (fixed random ids) is prefilled, "
    "then the new tokens are decoded greedily, each step timed; decode speed is the median step. Memory "
    "is measured after each round (the model's weights, the KV cache's tensors; on a GPU the allocator's "
    "peak) and shown beside our estimate from the config alone."
)
GENERATOR_HELP = (
    "**Our loop**: the app's own greedy loop on transformers' growing cache; prefill is its own timed "
    "forward. **Transformers generate**: transformers' `generate`, greedy; prefill is the time to its "
    "first new token (its own set-up included), each decode step the time between two tokens."
)
ESTIMATE_NOTE = (
    "Estimates: weights at the variant's format (the model's float type, or a packed variant's scheme on "
    "its linear layers with the rest kept as it is), the KV cache at the model's float type for the "
    "prompt plus the new tokens; the estimated peak adds one layer's activations. Variants no weight "
    "format describes (a packed output head, bitsandbytes, Methods-lab models) show measured weights only."
)


class SweepRun:
    """One sweep's settings and its rounds so far (filled as they finish)."""

    def __init__(self, machine: speed_view.Machine, generator: str, new_tokens: int) -> None:
        self.machine, self.generator, self.new_tokens = machine, generator, new_tokens
        self.rounds: list[sweeps.SweepRound] = []
        self.notes: list[str] = []
        self.finished = False


def sweep_form(loaded, lab_runs: dict):
    """The sweep's widgets: (variants, contexts, new tokens, generator) when Run is pressed, else None.
    The variant in the loaded model's own float type is the reference itself, so it is not offered."""
    own = speed.DTYPE_NAMES.get(speed.float_dtype(loaded.model))
    options = [REFERENCE_LABEL] + [v for v in speed.available_variants(loaded.device) if v != own]
    options += list(lab_runs)
    cols = st.columns([3, 3, 1])
    variants = cols[0].multiselect(
        "Variants",
        options,
        default=[REFERENCE_LABEL, "W8A16", "W4A16"],
        key="speed_sweep_variants",
        help=speed_view.VARIANTS_HELP,
    )
    contexts = cols[1].multiselect(
        "Context lengths (prompt tokens)",
        list(CONTEXT_OPTIONS),
        default=list(sweeps.CONTEXTS),
        key="speed_sweep_contexts",
    )
    number = NumberBoxes()
    new_tokens = number(cols[2], "New tokens", 1, 512, sweeps.NEW_TOKENS, key="speed_sweep_new_tokens")
    generator = st.radio(
        "Generator", list(GENERATOR_LABELS), horizontal=True, key="speed_sweep_generator", help=GENERATOR_HELP
    )
    pressed = st.button(
        "Run context sweep", type="primary", key="speed_sweep_run", disabled=not (variants and contexts)
    )
    if number.show() or not pressed:
        return None
    return variants, sorted(contexts), int(new_tokens), GENERATOR_LABELS[generator]


def run_sweep(loaded, variants: list[str], contexts, new_tokens: int, generator: str, lab_runs) -> None:
    """Sweep each variant with a progress bar and a Stop button, keeping each round as it finishes."""
    names = [sweeps.REFERENCE if v == REFERENCE_LABEL else v for v in variants]
    builders, missing = speed_view.lab_builders(lab_runs, names)
    for name, why in missing.items():
        st.info(f"**{name}** was left out: {why}", icon=":material/memory:")
    todo = [n if n == sweeps.REFERENCE or n in builders else speed.variant_recipe(n) for n in names]
    todo = [v for v in todo if not (isinstance(v, str) and v in missing)]
    run = SweepRun(speed_view.Machine.now(loaded.device), generator, new_tokens)
    st.session_state[SWEEP] = run
    stop = st.empty()  # only while the run goes on
    stop.button("Stop", key="speed_sweep_stop", help="Stops now; the rounds already finished are kept.")
    update, clear = progress_bar()
    try:
        done = sweeps.sweep_variants(
            loaded.model,
            todo,
            contexts,
            new_tokens,
            generator,
            update,
            builders=builders,
            on_round=run.rounds.append,
        )
        run.notes, run.finished = list(done.notes), True
    except Exception as exc:  # a failed variant leaves the rounds done so far
        show_error(exc, prefix="The context sweep stopped: ")
    finally:
        clear()
        stop.empty()


def sweep_table(rounds: list[sweeps.SweepRound]) -> pd.DataFrame:
    def mib(value):
        return None if value is None else round(value / MIB, 2)

    on_gpu = any(r.cuda_peak_bytes is not None for r in rounds)
    rows = []
    for r in rounds:
        row = {
            "variant": _label(r.variant),
            "context": r.context,
            "prefill s": round(r.prefill_seconds, 4),
            "prefill tok/s": round(r.prefill_tokens_per_s, 1),
            "decode ms/step": round(1e3 * r.decode_seconds_per_step, 2),
            "decode tok/s": round(r.decode_tokens_per_s, 1),
            "weights MiB measured": mib(r.weight_bytes),
            "weights MiB estimated": mib(r.estimated_weight_bytes),
            "KV MiB measured": mib(r.kv_bytes),
            "KV MiB estimated": mib(r.estimated_kv_bytes),
        }
        if on_gpu:
            row["CUDA peak MiB"] = mib(r.cuda_peak_bytes)
            row["peak MiB estimated"] = mib(r.estimated_peak_bytes)
        row["weights priced as"] = r.weights_label
        rows.append(row)
    return pd.DataFrame(rows)


def _label(variant: str) -> str:
    return REFERENCE_LABEL if variant == sweeps.REFERENCE else variant


def _by_variant(rounds: list[sweeps.SweepRound]) -> dict[str, list[sweeps.SweepRound]]:
    lines: dict[str, list[sweeps.SweepRound]] = {}
    for r in rounds:
        lines.setdefault(r.variant, []).append(r)
    return lines


def _context_axes(figure: go.Figure, rounds: list[sweeps.SweepRound]) -> None:
    contexts = sorted({r.context for r in rounds})
    figure.update_xaxes(
        type="log",
        tickmode="array",
        tickvals=contexts,
        ticktext=[f"{c:,}" for c in contexts],
        title="context",
    )


def speed_chart(rounds: list[sweeps.SweepRound]) -> go.Figure:
    """Prefill and decode tokens/s against context, one line per variant."""
    figure = make_subplots(rows=1, cols=2, subplot_titles=("Prefill", "Decode"))
    for index, (variant, rows) in enumerate(_by_variant(rounds).items()):
        color = FORMAT_COLORS.get(variant, f"hsl({(index * 67) % 360}, 60%, 45%)")
        for col, values in (
            (1, [r.prefill_tokens_per_s for r in rows]),
            (2, [r.decode_tokens_per_s for r in rows]),
        ):
            figure.add_scatter(
                x=[r.context for r in rows],
                y=values,
                mode="lines+markers",
                name=_label(variant),
                legendgroup=variant,
                showlegend=col == 1,
                line=dict(color=color),
                row=1,
                col=col,
            )
    _context_axes(figure, rounds)
    figure.update_yaxes(title="tokens/s", rangemode="tozero")
    figure.update_layout(height=400, **frame("Tokens per second against context", legend_below=True))
    return figure


def memory_chart(rounds: list[sweeps.SweepRound]) -> go.Figure:
    """Weights and KV cache against context: measured as markers, our estimate as a line (CUDA peak too)."""
    on_gpu = any(r.cuda_peak_bytes is not None for r in rounds)
    panels = ("Weights", "KV cache") + (("CUDA peak",) if on_gpu else ())
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=panels)
    for index, (variant, rows) in enumerate(_by_variant(rounds).items()):
        color = FORMAT_COLORS.get(variant, f"hsl({(index * 67) % 360}, 60%, 45%)")
        contexts = [r.context for r in rows]
        parts = [
            ([r.weight_bytes for r in rows], [r.estimated_weight_bytes for r in rows]),
            ([r.kv_bytes for r in rows], [r.estimated_kv_bytes for r in rows]),
        ]
        if on_gpu:
            parts.append(([r.cuda_peak_bytes for r in rows], [r.estimated_peak_bytes for r in rows]))
        for col, (measured, estimated) in enumerate(parts, start=1):
            figure.add_scatter(
                x=contexts,
                y=[None if v is None else v / MIB for v in measured],
                mode="markers",
                marker=dict(color=color, size=9),
                name=f"{_label(variant)} measured",
                legendgroup=variant,
                showlegend=col == 1,
                row=1,
                col=col,
            )
            if any(v is not None for v in estimated):
                figure.add_scatter(
                    x=contexts,
                    y=[None if v is None else v / MIB for v in estimated],
                    mode="lines",
                    line=dict(color=color, dash="dash"),
                    name=f"{_label(variant)} our estimate",
                    legendgroup=variant,
                    showlegend=col == 1,
                    row=1,
                    col=col,
                )
    _context_axes(figure, rounds)
    figure.update_yaxes(title="MiB", rangemode="tozero")
    figure.update_layout(
        height=400, **frame("Memory against context: measured and estimated", legend_below=True)
    )
    return figure


def sweep_results() -> None:
    run = st.session_state.get(SWEEP)
    if not (run and run.rounds):
        return
    generator = next(label for label, name in GENERATOR_LABELS.items() if name == run.generator)
    st.caption(f"{generator}, {run.new_tokens} new tokens per round. {run.machine.caption}")
    if not run.finished:
        st.caption("Stopped: the rounds finished so far.")
    for note in run.notes:
        st.caption(note)
    st.plotly_chart(speed_chart(run.rounds), key="speed_sweep_chart_speed")
    st.plotly_chart(memory_chart(run.rounds), key="speed_sweep_chart_memory")
    table = sweep_table(run.rounds)
    st.dataframe(table, hide_index=True)
    st.caption(ESTIMATE_NOTE)
    st.download_button(
        "Download the table (CSV)",
        table.to_csv(index=False),
        file_name="context_sweep.csv",
        mime="text/csv",
        key="speed_sweep_csv",
    )


def sweep_section(loaded, lab_runs: dict) -> None:
    """The context sweep: its form, the run when asked, and the last run's results."""
    st.subheader("Context sweep")
    st.caption(INTRO)
    request = sweep_form(loaded, lab_runs)
    if request is not None:
        run_sweep(loaded, *request, lab_runs)
    sweep_results()
