"""The Evaluate page's importance-matrix section under AppTest: reachable before any grid run, a run with one
fast format and the smallest windows gives the table and the grouped chart, a format the model cannot take
says why while the other still runs, no format picked says so, and a rerun keeps the results."""

from __future__ import annotations

import json

from tests.app.conftest import no_exceptions, open_page


def _fast_settings(app, formats):
    app.number_input(key="evaluate_windows").set_value(1).run()
    app.select_slider(key="evaluate_window").set_value(128).run()
    app.select_slider(key="evaluate_imatrix_windows").set_value(1).run()
    app.multiselect(key="evaluate_imatrix_formats").set_value(formats).run()


def _compare_rounding(app, timeout: float = 300):
    """Press Compare rounding, let the background comparison (ui.jobs) finish, and rerun to draw it."""
    app.button(key="evaluate_imatrix_run").click().run()
    no_exceptions(app)
    assert app.session_state["evaluate_imatrix_job"].wait(timeout), "the comparison did not finish"
    return app.run()


def _tables(app) -> list:
    """The section's tables (the grid's results table shows too when another test in this process ran the
    default grid: its cells are cached for every session)."""
    return [frame.value for frame in app.dataframe if "format" in frame.value.columns]


def test_compare_rounding_gives_the_table_and_chart_and_says_why_a_format_is_refused(app):
    open_page(app, "evaluate")
    assert any(sub.value == "Importance-weighted rounding (imatrix)" for sub in app.subheader)
    assert any("Press **Compare rounding**" in info.value for info in app.info)
    # Q8_0 is fast (llama.cpp's Q8_0 ignores the matrix: no gain); Q4_K needs rows of 256, SmolLM2's are 576
    _fast_settings(app, ["Q8_0", "Q4_K"])
    _compare_rounding(app)
    no_exceptions(app)
    assert not [button for button in app.button if button.key == "evaluate_imatrix_stop"]
    refused = [info.value for info in app.info if "**Q4_K** was not run" in info.value]
    assert refused and "super-blocks of 256 values; this row has 576" in refused[0]
    (table,) = _tables(app)
    assert list(table["format"]) == ["Q8_0"]
    row = table.iloc[0]
    assert row["bits/weight"] == 8.5 and 0 < row["KL without"] < 0.01
    assert row["KL with"] == row["KL without"] and row["gain"] == 0.0
    assert row["perplexity with"] > 1 and row["KL p99 with"] >= 0
    chart = next(
        c for c in app.get("plotly_chart") if "without and with the importance matrix" in c.proto.spec
    )
    spec = json.loads(chart.proto.spec)
    assert [trace["name"] for trace in spec["data"]] == ["round-to-nearest", "importance-weighted"]
    assert spec["layout"]["barmode"] == "group"
    app.run()  # a rerun keeps the rows: no button needed
    no_exceptions(app)
    assert [list(t["format"]) for t in _tables(app)] == [["Q8_0"]]


def test_no_format_picked_says_so(app):
    open_page(app, "evaluate")
    app.multiselect(key="evaluate_imatrix_formats").set_value([]).run()
    no_exceptions(app)
    assert any(info.value == "Pick at least one format to compare." for info in app.info)
    app.button(key="evaluate_imatrix_run").click().run()
    no_exceptions(app)
    assert any(info.value == "Pick at least one format to compare." for info in app.info)
    assert not _tables(app) and "evaluate_imatrix_job" not in app.session_state  # nothing started


def test_a_held_comparison_survives_other_clicks_refuses_a_grid_run_and_stops(app, monkeypatch):
    """The comparison runs in the background: other widgets and a second press leave it running, the grid
    waits for it (one job at a time on this page), and Stop ends it with nothing measured."""
    import threading

    import ui.pages.evaluate_imatrix

    gate = threading.Event()  # never opened: only Stop ends the held matrix collection

    def held(model, calib, progress):
        while not gate.wait(0.02):
            progress(0.0, "Held by the test")  # raises Stopped once Stop is pressed

    monkeypatch.setattr(ui.pages.evaluate_imatrix, "collect_importance", held)
    open_page(app, "evaluate")
    _fast_settings(app, ["Q8_0"])
    app.button(key="evaluate_imatrix_run").click().run()
    no_exceptions(app)
    job = app.session_state["evaluate_imatrix_job"]
    assert job.running and [b for b in app.button if b.key == "evaluate_imatrix_stop"]
    assert not any("Press **Compare rounding**" in info.value for info in app.info)
    app.select_slider(key="evaluate_imatrix_windows").set_value(2).run()
    app.button(key="evaluate_imatrix_run").click().run()  # refused while it runs
    app.button(key="evaluate_run").click().run()  # so is the grid
    no_exceptions(app)
    warnings = [warning.value for warning in app.warning]
    assert any("A rounding comparison is still running" in warning for warning in warnings), warnings
    assert "evaluate_grid_job" not in app.session_state
    assert app.session_state["evaluate_imatrix_job"] is job and job.running
    app.button(key="evaluate_imatrix_stop").click().run()
    assert job.wait(30) and job.error is None
    app.run()
    no_exceptions(app)
    assert not [b for b in app.button if b.key == "evaluate_imatrix_stop"] and not _tables(app)
    assert any("Press **Compare rounding** to measure Q8_0" in info.value for info in app.info)
