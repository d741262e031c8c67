"""The Outliers page's "Rotation" tab (QuaRot): rotate the residual stream, show that the model computes the
same function while its outliers spread out, then quantize with and without the rotation.

The work runs through ui/cache/rotation.py (engine.methods.rotation, engine.analysis.rotation_stats and the
evaluation): the rotated copy and its statistics are kept per session, so reruns are instant; the
comparison scores one quantized copy at a time, shows each row as it finishes and keeps it (a Stop button
ends the run after the current row, the planner page's pattern).
"""

from __future__ import annotations

import pandas as pd
import streamlit as st
import torch

from engine.analysis.rotation_stats import SITES
from engine.methods import RotationConfig
from engine.methods.rotation import RotationKind
from engine.models.data import DataError
from ui.cache import rotation as rotation_cache
from ui.errors import show_error
from ui.pages import rotation_charts as charts
from ui.progress import progress_bar

ERRORS = (ValueError, DataError, MemoryError, torch.OutOfMemoryError)  # shown; the page stays up
ROTATE = "outliers_rotation_requested"  # set by the buttons' callbacks, so no rerun can lose the click
COMPARE = "outliers_rotation_compare_requested"
SUPERSCRIPTS = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")

EXPLAIN = (
    "Rotating the residual stream by an orthogonal matrix (a randomized Hadamard) changes no output, but it "
    "spreads the few huge channels over all of them, so a token's activation scale is no longer set by one "
    "channel. Published: LLaMA-2-7B at W4A4 reaches a perplexity of about 2,000 with plain rounding and 6.1 "
    "with QuaRot (5.5 in FP16)."
)


def power_of_ten(value: float) -> str:
    """3.2e-06 as 3×10⁻⁶ (one significant digit)."""
    if value <= 0:
        return "0"
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}×10{str(int(exponent)).translate(SUPERSCRIPTS)}"


def controls_ui() -> RotationConfig:
    cols = st.columns([2, 2, 2, 1], vertical_alignment="bottom")
    kind = cols[0].selectbox(
        "Rotation",
        list(RotationKind),
        format_func=lambda k: k.value.capitalize(),
        key="outliers_rotation_kind",
        help="A randomized Hadamard (QuaRot) spreads every channel evenly; where the width has no Hadamard "
        "construction, a random orthogonal matrix is used and the tab says so.",
    )
    values = cols[1].checkbox(
        "Also rotate V/O per head",
        True,
        key="outliers_rotation_values",
        help="A small Hadamard inside each attention head, on the values and the output projection's input: "
        "exact, and it spreads the values' outliers for a 4-bit KV cache.",
    )
    online = cols[2].checkbox(
        "Online Hadamard before down_proj",
        True,
        key="outliers_rotation_online",
        help="The MLP multiplies its wide intermediate by a Hadamard on every call, before down_proj: the only "
        "rotation that adds work to the forward; it spreads that layer's input outliers.",
    )
    cols[3].button(
        "Rotate",
        type="primary",
        key="outliers_rotation_run",
        width="stretch",
        on_click=lambda: st.session_state.update({ROTATE: True}),
    )
    return RotationConfig(kind=kind, rotate_values=values, online_down=online)


def rotate_ui(loaded, config: RotationConfig) -> rotation_cache.RotationRun | None:
    found = rotation_cache.run(config)
    if found is not None:
        return found
    if not st.session_state.pop(ROTATE, False):
        st.info(
            "Press **Rotate** to fold the norms into the linears and rotate a copy of the model: about 5–20 s "
            "on two CPU cores for SmolLM2-135M. The model you loaded is not changed.",
            icon=":material/play_arrow:",
        )
        return None
    try:
        return rotation_cache.rotate(loaded, config)
    except ERRORS as exc:
        show_error(exc, prefix="Could not rotate the model. ")
        return None


def token_label(tokenizer, token_id: int) -> str:
    return f"token {token_id}" if tokenizer is None else repr(tokenizer.decode([int(token_id)]))


def before_after_ui(loaded, run: rotation_cache.RotationRun) -> None:
    stats = run.stats
    before, after = stats.before, stats.after
    metrics = st.columns(4)
    metrics[0].metric(
        "Same function: logits within",
        power_of_ten(run.logit_change),
        help=f"Relative difference of the rotated copy's logits from the original's on {run.probe_tokens} "
        f"tokens (size of the difference over the size of the logits); rounding alone may cause "
        f"{power_of_ten(run.tolerance)}.",
    )
    metrics[1].metric(
        "Largest max / RMS",
        f"{before.largest_ratio:,.1f}× → {after.largest_ratio:,.1f}×",
        help="A token's largest |value| over the root mean square of its residual vector, the largest over "
        "layers and tokens: what sets a per-token scale.",
    )
    metrics[2].metric(
        "Channel spread",
        f"{before.largest_spread:,.0f}× → {after.largest_spread:,.1f}×",
        help="The largest channel's max |value| over the median channel's: what a per-tensor scale covers.",
    )
    metrics[3].metric(
        "Fold + rotate",
        f"{run.seconds:.1f} s",
        help=f"{run.total_seconds:.1f} s with copying the model and checking its logits.",
    )
    if run.note:
        st.info(run.note.capitalize() + ".", icon=":material/info:")
    st.plotly_chart(
        charts.ratio_chart([x.max_over_rms for x in before.layers], [x.max_over_rms for x in after.layers]),
        width="stretch",
        key="outliers_rotation_ratio_chart",
    )
    top = max(before.layers, key=lambda layer: layer.max_over_rms)
    st.caption(
        f"Before rotating, the largest ratio ({top.max_over_rms:,.1f}) is on "
        f"{token_label(loaded.tokenizer, top.token_id)} at position {top.position} of window {top.window}, "
        f"after layer {top.layer}; channel #{top.top_channel} holds the largest values there. A rotation keeps "
        "each token's length, so the ratio cannot rise above the square root of the width before, nor fall "
        f"much below 3 after. Measured on {rotation_cache.STATS_WINDOWS.count} windows × "
        f"{rotation_cache.STATS_WINDOWS.window} tokens of the calibration text."
    )
    sites = [site for site, _ in SITES if site in before.layers[0].input_kurtosis]
    site = st.selectbox("Linear input", sites, key="outliers_rotation_site")
    st.plotly_chart(
        charts.kurtosis_chart(
            site,
            [x.input_kurtosis.get(site, float("nan")) for x in before.layers],
            [x.input_kurtosis.get(site, float("nan")) for x in after.layers],
        ),
        width="stretch",
        key="outliers_rotation_kurtosis_chart",
    )


def comparison_form_ui() -> tuple[list[str], bool, int, int]:
    cols = st.columns([3, 2, 2], vertical_alignment="bottom")
    settings = cols[0].multiselect(
        "Settings",
        list(rotation_cache.SETTINGS),
        list(rotation_cache.SETTINGS),
        key="outliers_rotation_settings",
        help="W<weights bits>A<activation bits>: the catalog's int recipes with per-token activations; KV4: "
        "the float weights with a 4-bit KV cache.",
    )
    windows = cols[1].select_slider("Evaluation windows", [1, 2, 4], 2, key="outliers_rotation_windows")
    tokens = cols[2].select_slider("Tokens per window", [64, 128, 256], 256, key="outliers_rotation_tokens")
    gptq = st.checkbox(
        "Also rotation + GPTQ (slow)",
        False,
        key="outliers_rotation_gptq",
        help="GPTQ on the rotated copy: about 1–2 minutes per setting on two CPU cores (the benchmark: "
        "65–128 s each with 4 × 256 calibration tokens).",
    )
    return settings, gptq, int(windows), int(tokens)


def results_frame(rows: list[rotation_cache.Row]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "setting": r.setting,
                "method": r.method,
                "perplexity": round(r.perplexity, 2),
                "mean KL (nats)": round(r.mean_kl, 4),
                "quantize (s)": round(r.seconds, 1),
            }
            for r in rows
        ]
    )


def show_results(where, rows: list[rotation_cache.Row], key: str) -> None:
    """The chart and the table of `rows` in `where` (`key`: unique per draw within a run)."""
    if not rows:
        return
    box = where.container()
    reference = rows[0].reference_perplexity
    frame = results_frame(rows)
    box.plotly_chart(
        charts.comparison_chart(frame.to_dict("records"), reference),
        width="stretch",
        key=f"outliers_rotation_chart_{key}",
    )
    box.dataframe(
        frame.style.format({"perplexity": "{:,.2f}"}),
        hide_index=True,
        width="stretch",
        key=f"outliers_rotation_table_{key}",
    )
    box.caption(
        f"The float model's perplexity on these windows: {reference:,.2f}. Mean KL against it, in nats."
    )


def run_comparison(loaded, config, todo: list[rotation_cache.Candidate], windows, tokens, done, table) -> None:  # fmt: skip
    stop = st.empty()
    stop.button(
        "Stop", key="outliers_rotation_stop", help="Stops after the current row; finished rows are kept."
    )
    update, clear = progress_bar()
    try:
        for index, candidate in enumerate(todo):
            label = f"{candidate.setting}: {candidate.method} ({index + 1}/{len(todo)})"

            def progress(fraction: float, message: str, index=index, label=label) -> None:
                update((index + fraction) / len(todo), f"{label}: {message}")

            try:
                rotation_cache.score(loaded, config, candidate, windows, tokens, progress)
            except ERRORS as exc:
                show_error(exc, prefix=f"{candidate.setting}, {candidate.method}: ")
            table.empty()
            show_results(table, ordered(done, todo), f"run_{index}")
    finally:
        clear()
        stop.empty()


def ordered(done: dict, candidates: list[rotation_cache.Candidate]) -> list[rotation_cache.Row]:
    keys = [(c.setting, c.method) for c in candidates]
    return [done[k] for k in keys if k in done] + [r for k, r in done.items() if k not in keys]


def comparison_ui(loaded, config: RotationConfig) -> None:
    st.subheader("Quantize after rotating")
    settings, gptq, windows, tokens = comparison_form_ui()
    try:
        todo_all = rotation_cache.candidates(loaded, settings, gptq)
    except ERRORS as exc:
        show_error(exc)
        return
    done = rotation_cache.rows(rotation_cache.comparison_key(config, windows, tokens))
    st.button(
        "Compare " + ", ".join(settings) if settings else "Compare",
        key="outliers_rotation_compare",
        disabled=not settings,
        on_click=lambda: st.session_state.update({COMPARE: True}),
    )
    st.caption(
        f"Each row quantizes a copy of the model, scores it on {windows} × {tokens} held-out tokens against "
        f"the float model and drops it. SmoothQuant (α = {rotation_cache.SMOOTHQUANT_ALPHA}) and GPTQ calibrate "
        f"on {windows} × {tokens} tokens of the first half of the text. Rotation uses the settings above."
    )
    table = st.empty()
    todo = [c for c in todo_all if (c.setting, c.method) not in done]
    if st.session_state.pop(COMPARE, False) and todo:
        run_comparison(loaded, config, todo, windows, tokens, done, table)
    table.empty()
    show_results(table, ordered(done, todo_all), "kept")


def rotation_tab(loaded) -> None:
    st.markdown(EXPLAIN)
    try:
        rotation_cache.check(loaded)
    except ValueError as exc:
        show_error(exc, prefix="This model cannot be rotated: ")
        return
    config = controls_ui()
    found = rotate_ui(loaded, config)
    if found is None:
        return
    before_after_ui(loaded, found)
    comparison_ui(loaded, config)
