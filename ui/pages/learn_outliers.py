"""The Learn page's "Outliers and rotation" tab: where the residual stream's outliers come from (massive
activations, the super weights that make them), why they break one int4 scale per token, and how a rotation
spreads them so 4-bit works. Measured on one short window of the sidebar's model
(engine/lessons/outliers.py); pages/learn.py only registers the tab."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from engine.lessons.outliers import OutliersLesson, ResidualPeaks, RotationStep, SuperWeightStep, TokenStep
from engine.models.sources import ModelSourceError
from ui import state
from ui.cache import lessons as lesson_cache
from ui.cache.models import load
from ui.charts import CLIP_COLOR, VALUE_COLOR, layout
from ui.errors import show_error
from ui.pages.learn import takeaway

BEFORE, AFTER = "#7f7f7f", "#2ca02c"


# -- charts --------------------------------------------------------------------------------------------


def peaks_chart(peaks: ResidualPeaks) -> go.Figure:
    layers = list(range(peaks.peak.numel()))
    figure = go.Figure()
    figure.add_scatter(
        x=layers,
        y=peaks.peak.numpy(),
        mode="lines+markers",
        name="largest |value|",
        line_color=CLIP_COLOR,
        customdata=list(zip(peaks.channel.tolist(), peaks.position.tolist(), strict=True)),
        hovertemplate="layer %{x}: %{y:,.0f}<br>channel %{customdata[0]}, token %{customdata[1]}<extra></extra>",
    )
    figure.add_scatter(
        x=layers,
        y=peaks.median.numpy(),
        mode="lines",
        name="median |value|",
        line_color=VALUE_COLOR,
        hovertemplate="layer %{x}: median %{y:.3g}<extra></extra>",
    )
    figure.update_yaxes(type="log")
    return layout(figure, "The residual stream after each layer", "layer", "|value|")


def ablation_chart(step: SuperWeightStep) -> go.Figure:
    labels = ["unchanged", f"{len(step.random)} random weights zeroed", "super weights zeroed"]
    values = [step.reference_perplexity, step.random_perplexity, step.zeroed_perplexity]
    figure = go.Figure(
        go.Bar(
            x=labels,
            y=values,
            marker_color=[BEFORE, VALUE_COLOR, CLIP_COLOR],
            text=[f"{v:,.1f}" if v < 1000 else f"{v:,.0f}" for v in values],
            textposition="outside",
            hovertemplate="%{x}: perplexity %{y:,.1f}<extra></extra>",
        )
    )
    figure.update_yaxes(type="log")
    return layout(figure, "Perplexity on this window", "", "perplexity", bargap=0.4)


def token_chart(token: TokenStep) -> go.Figure:
    figure = make_subplots(
        1, 2, shared_yaxes=True, subplot_titles=("before the rotation", "after the rotation")
    )
    for column, (values, step) in enumerate(
        ((token.before, token.step_before), (token.after, token.step_after)), start=1
    ):
        size = values.abs().clamp_min(1e-3).numpy()
        zero = size < step / 2
        for mask, name, color in ((~zero, "kept", VALUE_COLOR), (zero, "rounds to zero", CLIP_COLOR)):
            figure.add_scatter(
                x=[i for i, m in enumerate(mask) if m],
                y=size[mask],
                mode="markers",
                marker=dict(size=4, color=color),
                name=name,
                legendgroup=name,
                showlegend=column == 1,
                hovertemplate="channel %{x}: |value| %{y:.3g}<extra></extra>",
                row=1,
                col=column,
            )
        figure.add_hline(
            y=step / 2,
            line_dash="dot",
            line_color=CLIP_COLOR,
            annotation_text=f"half a step ({step / 2:,.0f})",
            row=1,
            col=column,
        )
        figure.update_xaxes(title_text="channel", row=1, col=column)
    figure.update_yaxes(type="log")
    title = f"One token's {token.hidden} channels after layer {token.layer}, int4 with one scale per token"
    return layout(figure, title, "channel", "|value|", top=70)


def rotation_chart(step: RotationStep) -> go.Figure:
    figure = make_subplots(1, 2, subplot_titles=("largest max / RMS of a token", "int4 per-token SQNR (dB)"))
    layers = list(range(step.ratio_before.numel()))
    pairs = ((step.ratio_before, step.ratio_after), (step.sqnr_before, step.sqnr_after))
    for column, (before, after) in enumerate(pairs, start=1):
        for values, name, color in ((before, "before the rotation", BEFORE), (after, "after", AFTER)):
            figure.add_scatter(
                x=layers,
                y=values.numpy(),
                mode="lines+markers",
                name=name,
                legendgroup=name,
                showlegend=column == 1,
                line_color=color,
                hovertemplate=f"{name}<br>layer %{{x}}: %{{y:.1f}}<extra></extra>",
                row=1,
                col=column,
            )
        figure.update_xaxes(title_text="layer", row=1, col=column)
    figure.add_hline(
        y=step.hidden**0.5,
        line_dash="dot",
        annotation_text=f"√{step.hidden}: one channel holds it all",
        row=1,
        col=1,
    )
    return layout(figure, "Every layer's residual stream, before and after the rotation", "layer", "", top=70)


# -- the tab -------------------------------------------------------------------------------------------


def _token_text(token_id: int) -> str:
    try:
        text = load(*state.selection()).tokenizer.decode([token_id])
    except (ModelSourceError, ValueError, AttributeError):
        return ""
    return f" ({text!r})"


def outliers_tab() -> None:
    st.markdown(
        "A few values in a language model's activations are thousands of times larger than the rest. This "
        "lesson follows them on the model in the sidebar: where they appear, which weights make them, why "
        "they break 4-bit activations, and how a rotation spreads them out so 4-bit works again."
    )
    try:
        lesson = lesson_cache.outliers()
    except (ModelSourceError, ValueError) as exc:
        show_error(exc, prefix="This lesson runs the model in the sidebar, and it could not: ")
        return
    st.caption(
        f"Measured on one window of {lesson.tokens} tokens from the held-out half of the Britannica text "
        f"({lesson.seconds:.1f} s)."
    )
    _peaks(lesson)
    _super_weights(lesson.super_weights)
    _token(lesson.token)
    _rotation(lesson.rotation)


def _peaks(lesson: OutliersLesson) -> None:
    st.subheader("1. One channel towers over the rest")
    st.markdown(
        "Each decoder layer adds its output to the residual stream, the vector every token carries from "
        "layer to layer. Most of its values are small; a few, always in the same channel and on the same "
        "token, are huge. Papers call them massive activations."
    )
    st.plotly_chart(peaks_chart(lesson.peaks), width="stretch")
    takeaway(lesson.peaks.takeaway)


def _super_weights(step: SuperWeightStep | None) -> None:
    st.subheader("2. A couple of weights make it")
    if step is None:
        st.caption("No single weight makes a massive value in this model on this window.")
        return
    first = step.weights[0]
    where = ", ".join(f"({c.coordinate.row}, {c.coordinate.column})" for c in step.weights)
    st.markdown(
        f"The value appears all at once, in layer {first.layer}'s MLP output projection. On that token, "
        f"the weights at {where} (row, column) multiply unusually large inputs and write "
        f"{first.output_value:,.0f} into channel {first.coordinate.row}. These are super weights: remove them "
        "and the model breaks, remove others of the same size and nothing happens."
    )
    st.plotly_chart(ablation_chart(step), width="stretch")
    takeaway(step.takeaway)


def _token(token: TokenStep) -> None:
    st.subheader("3. Why one scale per token fails")
    st.markdown(
        "4-bit activations share a scale per token: the token's largest |value| becomes code 7, so the step "
        "between codes is that value ÷ 7, and anything under half a step becomes 0. The rotation multiplies "
        "the vector by an orthogonal (randomized Hadamard) matrix: same length, same information, but the "
        "huge channel's energy is spread evenly over every channel."
    )
    st.plotly_chart(token_chart(token), width="stretch")
    st.caption(
        f"Token at position {token.position}{_token_text(token.token_id)}. With one scale for the whole "
        f"window instead of one per token, {token.tensor_zeros_before:.1%} of all values round to zero, and "
        f"still {token.tensor_zeros_after:.1%} after the rotation: it evens out a token's channels, not a "
        "token that is huge overall, which is why rotated models keep a scale per token."
    )
    takeaway(token.takeaway)


def _rotation(step: RotationStep) -> None:
    st.subheader("4. Rotation spreads the energy, and 4-bit works")
    st.markdown(
        "A token's max |x| ÷ RMS(x) says how much one channel dominates it: √(channels) when one channel holds "
        "everything, about 3 to 4 when the values look Gaussian. Folding the norms into the weights and "
        "rotating them (QuaRot) makes the model compute the same outputs with every "
        "residual vector rotated like this one."
    )
    if step.note:
        st.caption(f"Rotation: {step.note}.")
    st.plotly_chart(rotation_chart(step), width="stretch")
    takeaway(step.takeaway)
