"""The Evaluate page under AppTest: a small grid on the default model, cached cells, the findings panel, the
shared default evaluation set, the Q4_1 cell and one-line note, the heatmap's explained colour scale."""

from __future__ import annotations

import json
import threading

import pytest

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from engine.evaluation.study import BANDS, MODEL_GRID, QUICK_GRID
from tests.app.conftest import no_exceptions, open_page


def _metric(app, label):
    return next(metric.value for metric in app.metric if metric.label == label)


def _run_grid(app, timeout: float = 300):
    """Press Run grid, let the background grid run (ui.jobs) finish, and rerun to draw its result."""
    app.button(key="evaluate_run").click().run()
    no_exceptions(app)
    if "evaluate_grid_job" in app.session_state:  # none starts when every cell is cached
        assert app.session_state["evaluate_grid_job"].wait(timeout), "the grid did not finish"
    return app.run()


def _origin_notes(app) -> list[str]:
    return [caption.value for caption in app.caption if "distributed as llama.cpp Q4_1" in caption.value]


def test_defaults_are_the_shared_evaluation_set_and_the_grid_holds_the_models_own_4_bit_cell(app):
    open_page(app, "evaluate")
    assert app.number_input(key="evaluate_windows").value == DEFAULT_EVAL_SET.windows
    assert app.select_slider(key="evaluate_window").value == DEFAULT_EVAL_SET.window
    assert app.selectbox(key="evaluate_corpus").value == DEFAULT_EVAL_SET.corpus
    assert app.selectbox(key="evaluate_grid").value == f"Quick ({len(QUICK_GRID)} cells)"
    assert MODEL_GRID in [cell.name for cell in QUICK_GRID]
    assert any(f"on {DEFAULT_EVAL_SET.windows} windows" in info.value for info in app.info)
    # the Q4_1 origin: once, one short line, linking to the full account (no banner above the charts)
    notes = _origin_notes(app)
    assert len(notes) == 1 and len(notes[0]) < 190 and "](overview)" in notes[0], notes
    assert not [warning for warning in app.warning if "Q4_1" in warning.value]


def test_evaluate_waits_for_the_button_then_runs_and_caches(app):
    open_page(app, "evaluate")
    assert any("Press **Run grid**" in info.value for info in app.info)
    app.selectbox(key="evaluate_grid").set_value("Pick cells").run()
    app.multiselect(key="evaluate_cells").set_value(["W8", "W4 Q4_1", "W2"]).run()
    app.number_input(key="evaluate_windows").set_value(1).run()
    app.select_slider(key="evaluate_window").set_value(128).run()
    _run_grid(app)
    no_exceptions(app)
    table = app.dataframe[0].value
    assert list(table["cell"]) == ["W16 / KV16", "W8", "W4 Q4_1", "W2"]
    w8, q4_1, w2 = (table["relative_change"][i] for i in (1, 2, 3))
    assert abs(w8) < 0.05 and q4_1 == 0.0 and w2 > 1.0  # the model's own grid reproduces it exactly
    assert _metric(app, "Worst cell") == "W2"
    assert any("2-bit weights collapse" in s.value for s in app.success)
    assert any("Weights tolerate 8 and 4 bits" in s.value and "W4 Q4_1" in s.value for s in app.success)
    assert len(_origin_notes(app)) == 1
    # which windows were scored, and that they are not the default set other pages score
    scored = [c.value for c in app.caption if c.value.startswith("Scored on 1 window × 128 tokens")]
    assert scored and "not the default set" in scored[0] and "Britannica" in scored[0]
    # the heatmap's colours follow the fixed bands its legend and caption explain
    heatmap = next(chart for chart in app.get("plotly_chart") if "fixed scale" in chart.proto.spec)
    trace = json.loads(heatmap.proto.spec)["data"][0]
    assert trace["colorbar"]["ticktext"][0] == "close: Δppl ≤ +2%"
    assert trace["colorbar"]["ticktext"][-1] == "broken: > ×2"
    assert trace["z"][0][3] == BANDS.index("broken") + 0.5  # W2's Δ perplexity
    assert trace["z"][0][2] == BANDS.index("close") + 0.5  # W4 Q4_1 reproduces the reference
    assert any(c.value.startswith("Colour is a fixed scale") for c in app.caption)
    # llama.cpp's drift statistics per cell, and the per-token KL histogram of a picked cell
    drift = app.dataframe[1].value.set_index("cell")
    assert list(drift.index) == ["W8", "W4 Q4_1", "W2"]
    assert drift.loc["W4 Q4_1", "KL max"] < 1e-5 and drift.loc["W4 Q4_1", "same top"] == 1.0
    assert drift.loc["W8", "KL p99"] < drift.loc["W2", "KL p99"] and drift.loc["W2", "RMS Δp"] > 0.1
    assert drift.loc["W2", "KL med"] <= drift.loc["W2", "KL p99"] <= drift.loc["W2", "KL max"]
    assert app.selectbox(key="evaluate_drift_pick").value == "W8"
    app.selectbox(key="evaluate_drift_pick").set_value("W4 Q4_1").run()
    no_exceptions(app)
    histogram = next(c for c in app.get("plotly_chart") if "KL divergence per token" in c.proto.spec)
    spec = json.loads(histogram.proto.spec)
    assert spec["layout"]["xaxis"]["type"] == "log"
    assert (
        "W4 Q4_1: KL divergence per token (127 positions; 127 at or below" in spec["layout"]["title"]["text"]
    )
    app.run()  # a rerun uses the cached cells: no button needed
    no_exceptions(app)
    assert list(app.dataframe[0].value["cell"]) == ["W16 / KV16", "W8", "W4 Q4_1", "W2"]


def test_too_many_tokens_for_a_short_upload_is_explained(app):
    open_page(app, "evaluate")
    app.selectbox(key="evaluate_corpus").set_value("upload").run()
    no_exceptions(app)
    assert any("Upload a plain-text file" in info.value for info in app.info)


def test_a_window_count_out_of_range_is_said_by_the_run_button_and_nothing_runs(app):
    open_page(app, "evaluate")
    app.number_input(key="evaluate_windows").set_value(0)
    app.button(key="evaluate_run").click().run()
    no_exceptions(app)
    assert [error.value for error in app.error] == ["Windows must be from 1 to 16 (it is 0)."]
    assert not app.dataframe and not app.get("plotly_chart")  # nothing scored
    app.number_input(key="evaluate_windows").set_value(1).run()  # fixed: the old click runs nothing
    no_exceptions(app)
    assert not app.error and not app.dataframe
    assert any("Press **Run grid**" in info.value for info in app.info)


def test_todays_formats_show_their_bits_and_quality_against_size(app):
    open_page(app, "evaluate")
    grids = app.selectbox(key="evaluate_grid").options
    assert any(option.startswith("Formats at 4 bits") for option in grids)
    app.selectbox(key="evaluate_grid").set_value("Pick cells").run()
    assert {"Q4_K_M", "Q5_K_M", "W8 FP8 block128", "Q6_K"} <= set(
        app.multiselect(key="evaluate_cells").options
    )
    app.multiselect(key="evaluate_cells").set_value(["W4 MXFP4", "W4 NVFP4", "KV4 NVFP4"]).run()
    app.number_input(key="evaluate_windows").set_value(1).run()
    app.select_slider(key="evaluate_window").set_value(128).run()
    _run_grid(app)
    no_exceptions(app)
    table = app.dataframe[0].value
    bits = dict(zip(table["cell"], table["bits_per_weight"], strict=True))
    assert bits["W4 MXFP4"] == 4.25 and abs(bits["W4 NVFP4"] - 4.5) < 1e-4
    assert bits["KV4 NVFP4"] != bits["KV4 NVFP4"]  # NaN: the KV-cache cell keeps the weights
    charts = [chart.proto.spec for chart in app.get("plotly_chart")]
    assert any("Quality vs size: mean KL" in spec for spec in charts)


@pytest.fixture
def held_grid(monkeypatch):
    """The grid run waits at its start until the test opens the gate (or Stop is pressed), so the test
    clicks while it is under way; yields the gate."""
    import ui.pages.evaluate

    real_run_grid = ui.pages.evaluate.run_grid
    gate = threading.Event()

    def held(*args, progress, **kwargs):
        while not gate.wait(0.02):
            progress(0.0, "Held by the test")  # raises Stopped once Stop is pressed
        return real_run_grid(*args, progress=progress, **kwargs)

    monkeypatch.setattr(ui.pages.evaluate, "run_grid", held)
    yield gate
    gate.set()


def _stop_buttons(app):
    return [button for button in app.button if button.key == "evaluate_stop"]


def _held_run(app, cell: str):
    """Start a held grid run of one cell on 1 window of 128 tokens (a cell no other test scores so)."""
    open_page(app, "evaluate")
    app.selectbox(key="evaluate_grid").set_value("Pick cells").run()
    app.multiselect(key="evaluate_cells").set_value([cell]).run()
    app.number_input(key="evaluate_windows").set_value(1).run()
    app.select_slider(key="evaluate_window").set_value(128).run()
    app.button(key="evaluate_run").click().run()
    no_exceptions(app)
    job = app.session_state["evaluate_grid_job"]
    assert job.running and _stop_buttons(app)
    return job


def test_a_grid_run_goes_on_while_other_widgets_change(app, held_grid):
    """The grid runs in the background: other widgets and a second Run grid press rerun the page without
    cancelling it; progress and Stop stay visible, and the run finishes with its cell."""
    job = _held_run(app, "KV8")
    assert any(text in bar.proto.text for bar in app.get("progress") for text in ("Starting", "Held by"))
    assert not any("Press **Run grid**" in info.value for info in app.info)
    app.multiselect(key="evaluate_imatrix_formats").set_value(["Q8_0"]).run()
    app.select_slider(key="evaluate_window").set_value(256).run()
    app.button(key="evaluate_run").click().run()  # refused while the first one runs
    no_exceptions(app)
    assert any("still running" in warning.value for warning in app.warning)
    assert app.session_state["evaluate_grid_job"] is job and job.running and _stop_buttons(app)
    app.select_slider(key="evaluate_window").set_value(128).run()
    held_grid.set()
    assert job.wait(120)
    app.run()
    no_exceptions(app)
    assert list(app.dataframe[0].value["cell"]) == ["W16 / KV16", "KV8"]
    assert not _stop_buttons(app) and not app.error


def test_stop_ends_the_grid_run(app, held_grid):
    job = _held_run(app, "KV3")  # stopped before it scores: never cached
    app.button(key="evaluate_stop").click().run()
    assert job.wait(30) and job.error is None
    app.run()
    no_exceptions(app)
    assert not _stop_buttons(app) and not app.error
    assert any("Press **Run grid** to score 1 cell(s)" in info.value for info in app.info)
