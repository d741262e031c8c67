"""The Outliers page under AppTest on the default model: collect once, then drive every tab's controls.

AppTest renders all tabs at once, so every chart and table is built on each run. The collection uses
2 windows of 128 tokens to stay quick; the statistics live in a process-wide registry, so the tests after
the first reuse them.
"""

from __future__ import annotations

import importlib.util
import threading

import pytest

from tests.app.conftest import no_exceptions, open_page

pytestmark = pytest.mark.slow


def collect(app, timeout: float = 300):
    """Press Collect statistics, let the background collection (ui.jobs) finish, and rerun to draw it."""
    app.button(key="outliers_collect").click().run()
    no_exceptions(app)
    if "outliers_collect_job" in app.session_state:  # none starts when the statistics are cached
        assert app.session_state["outliers_collect_job"].wait(timeout), "the collection did not finish"
    return app.run()


def _collected(app):
    open_page(app, "outliers")
    assert any("Collect statistics" in info.value for info in app.info)
    app.number_input(key="outliers_windows").set_value(2)
    app.select_slider(key="outliers_window").set_value(128)
    collect(app)
    no_exceptions(app)
    return app


def _metrics(app):
    return {metric.label: metric.value for metric in app.metric}


def test_collect_reports_residual_outlier_and_kv_contrast(app):
    _collected(app)
    metrics = _metrics(app)
    assert metrics["Residual outlier channel"] == "#507"
    assert float(metrics["Its largest |x|"].replace(",", "")) > 5_000
    key_ratio, value_ratio = (float(part) for part in metrics["Key / value spread"].split(" / "))
    assert key_ratio > 2.5 and key_ratio > 1.5 * value_ratio
    assert metrics["Tokens measured"] == "256"
    assert any("Residual-stream channel **#507**" in markdown.value for markdown in app.markdown)
    assert len(app.tabs) == 8 and len(app.get("plotly_chart")) >= 11
    importance = next(frame.value for frame in app.dataframe if "share of total" in frame.value.columns)
    assert len(importance) == 210 and abs(importance["share of total"].sum() - 1) < 1e-6  # every linear


def test_tabs_controls_change_the_view(app):
    _collected(app)
    charts_before = len(app.get("plotly_chart"))
    app.radio(key="outliers_w_stat").set_value("kurtosis").run()
    app.selectbox(key="outliers_w_layer").set_value(29).run()
    app.radio(key="outliers_w_module").set_value("down_proj").run()
    no_exceptions(app)
    assert any("1536" in caption.value for caption in app.caption)  # down_proj is 576 x 1536
    app.radio(key="outliers_a_stat").set_value("outlier channels").run()
    app.selectbox(key="outliers_a_layer").set_value(3).run()
    app.radio(key="outliers_a_site").set_value("down_proj in").run()
    app.segmented_control(key="outliers_a_view").set_value("3-D surface").run()
    app.selectbox(key="outliers_kv_layer").set_value(20).run()
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == charts_before
    assert app.dataframe[0].value["feature dim"].iloc[0] == 247  # the LLM.int8() table, systematic first
    app.number_input(key="outliers_threshold").set_value(100_000.0).run()
    no_exceptions(app)
    assert any("No feature meets all three criteria" in markdown.value for markdown in app.markdown)


def _ranking(app):
    return next(frame.value for frame in app.dataframe if "kind" in frame.value.columns)


def test_sensitivity_follows_the_sidebar_scheme(app):
    _collected(app)
    ranking = _ranking(app)
    assert set(ranking["kind"]) == {"weight", "activation", "key", "value"}
    worst_int4 = ranking["SQNR (dB)"].min()
    assert app.get("download_button")
    app.select_slider(key="qe_scheme_bits").set_value(8).run()
    no_exceptions(app)
    assert _ranking(app)["SQNR (dB)"].min() > worst_int4 + 10
    app.selectbox(key="qe_scheme_start").set_value("Q4_K").run()  # a GGUF type: 256-value super-blocks
    no_exceptions(app)
    ranking = _ranking(app)
    down = ranking[(ranking["kind"] == "weight") & (ranking["tensor"] == "down_proj")]
    assert len(down) == 30 and down["SQNR (dB)"].notna().all()  # rows of 1536 = 6 super-blocks
    q_proj = ranking[(ranking["kind"] == "weight") & (ranking["tensor"] == "q_proj")]
    assert q_proj["SQNR (dB)"].isna().all()  # rows of 576 do not fit; the note says why
    assert q_proj["note"].str.contains("256").all()


def test_other_texts_and_clear_errors(app):
    open_page(app, "outliers")
    app.selectbox(key="outliers_corpus").set_value("pydoc")
    app.number_input(key="outliers_windows").set_value(1)
    app.select_slider(key="outliers_window").set_value(64)
    collect(app)
    no_exceptions(app)
    assert _metrics(app)["Tokens measured"] == "64"
    app.selectbox(key="outliers_corpus").set_value("upload").run()
    assert any("Upload a plain-text file" in info.value for info in app.info)
    if importlib.util.find_spec("datasets") is None:  # offline without `datasets`: a clear message
        app.selectbox(key="outliers_corpus").set_value("wikitext2").run()
        app.button(key="outliers_collect").click().run()
        assert app.session_state["outliers_collect_job"].wait(60)
        errors = [error.value for error in app.error]  # said once: on this run if it failed at once
        app.run()
        no_exceptions(app)
        errors += [error.value for error in app.error]  # or on the one after
        assert len([e for e in errors if "needs the `datasets` package" in e]) == 1, errors


@pytest.fixture
def held_collection(monkeypatch):
    """The collection waits at its start until the test opens the gate (or Stop is pressed), so the test
    clicks while it is under way; yields the gate."""
    import ui.cache.outliers

    real_collect = ui.cache.outliers.collect_stats
    gate = threading.Event()

    def held(*args, progress, **kwargs):
        while not gate.wait(0.02):
            progress(0.0, "Held by the test")  # raises Stopped once Stop is pressed
        return real_collect(*args, progress=progress, **kwargs)

    monkeypatch.setattr(ui.cache.outliers, "collect_stats", held)
    yield gate
    gate.set()


def _stop_buttons(app):
    return [button for button in app.button if button.key == "outliers_stop"]


def test_a_collection_goes_on_while_other_widgets_change_and_stop_ends_one(app, held_collection):
    """The collection runs in the background: the threshold and a second Collect press rerun the page
    without cancelling it; progress and Stop stay visible and it finishes. Stop ends the next one."""
    open_page(app, "outliers")
    app.number_input(key="outliers_windows").set_value(3)  # 3 x 64: a size no other test collects
    app.select_slider(key="outliers_window").set_value(64)
    app.button(key="outliers_collect").click().run()
    no_exceptions(app)
    job = app.session_state["outliers_collect_job"]
    assert job.running and _stop_buttons(app) and app.get("progress")
    assert not any("Press **Collect statistics**" in info.value for info in app.info)
    app.number_input(key="outliers_threshold").set_value(8.0).run()
    app.button(key="outliers_collect").click().run()  # refused while the first one runs
    no_exceptions(app)
    assert any("still running" in warning.value for warning in app.warning)
    assert app.session_state["outliers_collect_job"] is job and job.running and _stop_buttons(app)
    held_collection.set()
    assert job.wait(120)
    app.run()
    no_exceptions(app)
    assert _metrics(app)["Tokens measured"] == "192" and not _stop_buttons(app)
    held_collection.clear()  # a second collection, stopped while held: nothing is kept
    app.number_input(key="outliers_windows").set_value(5).run()
    app.button(key="outliers_collect").click().run()
    stopped = app.session_state["outliers_collect_job"]
    assert stopped is not job and stopped.running
    app.button(key="outliers_stop").click().run()
    assert stopped.wait(30) and stopped.error is None
    app.run()
    no_exceptions(app)
    assert not _stop_buttons(app) and not app.error
    assert any("Press **Collect statistics**" in info.value for info in app.info)
