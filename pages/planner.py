"""Plan a recipe: which format should each tensor get for a target size? Measure each tensor's cost in
each candidate format once, then move the budget slider: the planner re-solves from the kept costs and
draws its recipe, which can be scored against the reference, compared with uniform formats and simple
heuristics, exported for llama.cpp or as JSON, and kept as a model for Compare, Speed and the Methods lab's
export (ui/pages/planner_keep.py).

Read widgets -> measure costs (ui/pages/planner.py: `start_measure`, a background job that other clicks
leave running; kept per session in ui/cache/planner.py) -> plan at the slider's budget -> draw
(ui/pages/planner_charts.py) -> score and export on request.
"""

from __future__ import annotations

import streamlit as st

from engine.planner import plan
from ui import cache, page
from ui.cache import planner as planner_cache
from ui.errors import show_error
from ui.pages import planner as view
from ui.pages import planner_charts as charts
from ui.pages import planner_keep as keeping
from ui.progress import progress_bar

MEASURE = "planner_measure_requested"
COMPARE = "planner_compare_requested"


def measure_section(loaded, session) -> None:
    settings = view.measure_settings()
    st.button(
        "Measure costs",
        type="primary",
        key="planner_measure",
        on_click=lambda: st.session_state.update({MEASURE: True}),
        help="Quantizes one tensor at a time in each candidate format and prices it by the KL it causes.",
    )
    if st.session_state.pop(MEASURE, False):
        view.start_measure(loaded, settings, session)
    if view.measuring():  # goes on through other clicks; the rest of the page waits for its table
        st.stop()
    table = session.costs
    if table is None:
        st.info("Press **Measure costs** to price every tensor (about two minutes on two CPU cores).", icon=":material/play_arrow:")  # fmt: skip
        st.stop()
    if not table.complete:
        st.warning(f"Stopped after {len(table.cost)} of {len(table.tensors)} tensors; measure again to plan.", icon=":material/stop:")  # fmt: skip
        st.stop()
    st.caption(
        f"{len(table.tensors)} tensors priced in {table.seconds:.0f} s ({session.costs_note}). Each tensor's KL "
        "was measured once in its coarsest candidate; its other formats are estimated from the layer's output "
        "error, scaled by that measurement."
    )


def planned_recipe(session, budget: float):
    try:
        recipe = plan(session.costs, budget)
    except ValueError as exc:
        show_error(exc)
        st.stop()
    counts = ", ".join(f"{label}: {count}" for label, count in recipe.format_counts().items())
    cols = st.columns(3)
    cols[0].metric(
        "Bits per weight", f"{recipe.bits_per_weight:.3f}", help="Scales and zero points included."
    )
    cols[1].metric(
        "Predicted KL", f"{recipe.predicted_kl:.4f}", help="Sum of each tensor's KL cost, in nats."
    )
    cols[2].markdown(f"**Tensors per format**  \n{counts}")  # a list: a metric would cut it off
    return recipe


def measure_recipe(loaded, session, recipe, eval_windows: int) -> None:
    if st.button("Measure this recipe", key="planner_score", help="Quantize a copy of the model with this recipe and score it against the reference."):  # fmt: skip
        update, clear = progress_bar()
        try:
            view.score(loaded, recipe, "planner", session, eval_windows, progress=update)
        except ValueError as exc:
            show_error(exc)
        finally:
            clear()
    scored = session.scores.get(recipe.label)
    if scored is not None:
        st.markdown(
            f"Measured KL **{scored.mean_kl:.4f}** nats (predicted {recipe.predicted_kl:.4f}), perplexity "
            f"**{scored.perplexity:.2f}** (reference {scored.reference_perplexity:.2f}), top-1 agreement "
            f"{scored.top1:.1%}."
        )


def comparison_section(loaded, session, budget: float, eval_windows: int) -> None:
    st.subheader("Against uniform formats and heuristics")
    recipes = view.comparison(session.costs, budget)
    st.caption("Scores " + ", ".join(r.label for _, r in recipes) + ".")
    st.button("Measure the comparison", key="planner_compare", on_click=lambda: st.session_state.update({COMPARE: True}))  # fmt: skip
    if st.session_state.pop(COMPARE, False):
        view.score_all(loaded, recipes, session, eval_windows)
    scores = list(session.scores.values())
    if not scores:
        return
    st.plotly_chart(charts.pareto(scores), width="stretch", key="planner_pareto")
    st.dataframe(view.scores_table(scores), hide_index=True, width="stretch")
    figure = charts.predicted_vs_measured(scores)
    if figure is not None:
        st.plotly_chart(figure, width="stretch", key="planner_predicted")


def main() -> None:
    page.start(
        "Plan a recipe",
        "Choose a format per tensor under a bit budget: the planner prices each tensor in each candidate "
        "format by the KL it causes, then picks the mix with the least predicted KL.",
    )
    loaded = cache.current_model_or_stop()
    session = planner_cache.session()
    measure_section(loaded, session)
    budget = view.budget_slider(session.costs)
    recipe = planned_recipe(session, budget)
    st.plotly_chart(charts.format_map(recipe), width="stretch", key="planner_map")
    eval_windows = int(st.select_slider("Evaluation windows (× 256 tokens)", [1, 2, 4], 2, key="planner_eval_windows"))  # fmt: skip
    measure_recipe(loaded, session, recipe, eval_windows)
    keeping.keep_section(loaded, session, recipe, "planner", eval_windows, key="planner_keep")
    comparison_section(loaded, session, budget, eval_windows)
    view.exports(recipe, loaded, session.costs, session)
    if session.loaded is not None:
        st.success(f"Loaded {session.loaded.label}: {session.loaded.bits_per_weight:.3f} bits per weight.")
        st.plotly_chart(charts.format_map(session.loaded), width="stretch", key="planner_loaded_map")
        label = f"Planned {session.loaded.bits_per_weight:.2f} bpw (from file)"
        keeping.keep_section(
            loaded, session, session.loaded, "loaded", eval_windows, "planner_keep_loaded", label
        )


main()
