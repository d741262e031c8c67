"""The planner page under AppTest on the default model: measure (small setting), re-solve on the slider,
score the recipe, export, and keep its model for the Compare page."""

from __future__ import annotations

import pytest

from tests.app.conftest import no_exceptions, open_page
from ui.cache import planner as planner_cache
from ui.cache.method_runs import RUNS


@pytest.fixture
def held_measure(monkeypatch):
    """Measuring waits at its start until the test opens the gate (or Stop is pressed); yields the gate."""
    import threading

    from ui.pages import planner as view

    real_measure = view.measure_costs
    gate = threading.Event()

    def held(*args, should_stop=None, **kwargs):
        while not gate.wait(0.02) and not should_stop():
            pass
        return real_measure(*args, should_stop=should_stop, **kwargs)

    monkeypatch.setattr(view, "measure_costs", held)
    yield gate
    gate.set()


def _stop_buttons(app) -> list:
    return [button for button in app.button if button.label == "Stop"]


def test_planner_measures_plans_scores_and_exports(app, held_measure):
    open_page(app, "planner")
    assert any("Measure costs" in info.value for info in app.info)
    app.select_slider(key="planner_tokens").set_value(64).run()
    app.selectbox(key="planner_scope").set_value("last 4 (quick look)").run()
    app.button(key="planner_measure").click().run()
    no_exceptions(app)
    job = app.session_state["planner_measure_job"]
    assert job.running and _stop_buttons(app) and app.get("progress")  # a background job: other clicks
    app.select_slider(key="planner_tokens").set_value(128).run()  # leave it running
    app.button(key="planner_measure").click().run()  # refused while the first one runs
    no_exceptions(app)
    assert any("still running" in warning.value for warning in app.warning)
    assert app.session_state["planner_measure_job"] is job and job.running and _stop_buttons(app)
    held_measure.set()
    assert job.wait(300), "the measurement did not finish"
    app.run()
    no_exceptions(app)
    assert not _stop_buttons(app)  # shown while measuring, gone after
    session = app.session_state[planner_cache.KEY]
    assert session.costs is not None and session.costs.complete and len(session.costs.cost) == 4 * 7
    assert "1 window(s) × 64 tokens" in session.costs_note  # the settings it started with
    assert app.metric[0].value == "4.500"  # the default budget, hit exactly
    app.slider(key="planner_budget").set_value(4.0).run()  # re-solves from the kept costs
    no_exceptions(app)
    assert app.metric[0].value == "4.000"
    assert any("format per tensor" in chart.proto.spec for chart in app.get("plotly_chart"))
    app.select_slider(key="planner_eval_windows").set_value(1).run()
    app.button(key="planner_score").click().run()
    no_exceptions(app)
    assert any(m.value.startswith("Measured KL **") for m in app.markdown)
    scored = app.session_state[planner_cache.KEY].scores["planner at 4.00 bpw"]
    assert 0 < scored.mean_kl < 5 and scored.bits_per_weight == 4.0
    assert scored.mean_kl < scored.kl_p99 < scored.max_kl  # llama.cpp's 99th percentile, between the two
    # int3 g32 is not a llama.cpp type: no --tensor-type lines, said in words
    assert any("no type for int3 g32" in info.value for info in app.info)
    assert any(b.label == "Download the recipe (JSON)" for b in app.get("download_button"))
    # kept as a model like the Methods lab's: in its runs, offered on Compare
    app.button(key="planner_keep").click().run()
    no_exceptions(app)
    run = app.session_state[RUNS]["Planned 4.00 bpw"]
    assert (
        run.method == "Planned recipe" and run.missing is None and run.bits_per_weight == pytest.approx(4.0)
    )
    assert any(s.value.startswith("Kept **Planned 4.00 bpw**") for s in app.success)
    app.switch_page("pages/compare.py").run()
    no_exceptions(app)
    assert "Planned 4.00 bpw (Methods lab)" in app.multiselect(key="compare_variants").options
    app.switch_page("pages/methods.py").run()  # its export section offers it: an F16 .gguf, since int3 g32
    no_exceptions(app)  # has no llama.cpp type (said, with the tensors it holds)
    assert app.selectbox(key="methods_export_run").value == "Planned 4.00 bpw"
    assert len(app.radio(key="methods_export_format").options) == 1
    assert any("int3 g32" in c.value and "llama.cpp candidate set" in c.value for c in app.caption)


def test_stop_ends_a_measurement_with_a_partial_table(app, held_measure):
    open_page(app, "planner")
    app.select_slider(key="planner_tokens").set_value(64).run()
    app.selectbox(key="planner_scope").set_value("last 4 (quick look)").run()
    app.button(key="planner_measure").click().run()
    job = app.session_state["planner_measure_job"]
    app.button(key="planner_stop").click().run()
    assert job.wait(60)
    app.run()
    no_exceptions(app)
    table = app.session_state[planner_cache.KEY].costs
    assert not table.complete and len(table.cost) < 4 * 7
    assert any(w.value.startswith(f"Stopped after {len(table.cost)} of 28 tensors") for w in app.warning)
    assert not _stop_buttons(app)


def test_planner_charts_draw_every_series():
    import torch

    from engine.planner import DEFAULT_CANDIDATES, measure_costs, plan
    from tests.conftest import build_tiny_llama
    from ui.cache.planner import Scored
    from ui.pages import planner as view
    from ui.pages import planner_charts

    model = build_tiny_llama(seed=1, num_hidden_layers=3, initializer_range=0.1)
    table = measure_costs(model, torch.randint(3, 96, (1, 16), generator=torch.Generator().manual_seed(0)), DEFAULT_CANDIDATES)  # fmt: skip
    recipe = plan(table, 4.5)
    heatmap = planner_charts.format_map(recipe).data[0]
    assert len(heatmap.y) == 3 and len(heatmap.x) == 7  # layers down, modules across
    kinds = [kind for kind, _ in view.comparison(table, 4.5)]
    assert kinds.count("uniform") == 4 and "heuristic" in kinds and kinds.count("planner") >= 2
    scores = [
        Scored(label, kind, bits, kl * 1.2, kl, 1.0, 0.9, 10.0, 9.0)
        for label, kind, bits, kl in (("u", "uniform", 4.5, 0.3), ("h", "heuristic", 4.8, 0.25), ("p", "planner", 4.5, 0.2))
    ]  # fmt: skip
    assert [trace.name for trace in planner_charts.pareto(scores).data] == ["uniform", "heuristic", "planner"]
    assert planner_charts.predicted_vs_measured(scores) is not None
    assert list(view.scores_table(scores)["recipe"]) == ["p", "u", "h"]
    scores[0] = Scored("u", "uniform", 4.5, 0.36, 0.3, 1.0, 0.9, 10.0, 9.0, kl_p99=0.75)
    table = view.scores_table(scores)
    assert list(table.columns[4:7]) == ["mean KL", "KL p99", "max KL"] and table["KL p99"][1] == 0.75
