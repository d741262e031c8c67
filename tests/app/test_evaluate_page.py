"""The Evaluate page under AppTest: a small grid on the default model, cached cells, the findings panel."""

from __future__ import annotations

from tests.app.conftest import no_exceptions, open_page


def _metric(app, label):
    return next(metric.value for metric in app.metric if metric.label == label)


def test_evaluate_waits_for_the_button_then_runs_and_caches(app):
    open_page(app, "evaluate")
    assert any("Press **Run grid**" in info.value for info in app.info)
    app.selectbox(key="evaluate_grid").set_value("Pick cells").run()
    app.multiselect(key="evaluate_cells").set_value(["W8", "W2"]).run()
    app.number_input(key="evaluate_windows").set_value(1).run()
    app.select_slider(key="evaluate_window").set_value(128).run()
    app.button(key="evaluate_run").click().run()
    no_exceptions(app)
    table = app.dataframe[0].value
    assert list(table["cell"]) == ["W16 / KV16", "W8", "W2"]
    w8, w2 = table["relative_change"][1], table["relative_change"][2]
    assert abs(w8) < 0.05 and w2 > 1.0
    assert _metric(app, "Worst cell") == "W2"
    assert any("2-bit weights collapse" in s.value for s in app.success)
    assert any("Q4_1" in caption.value for caption in app.caption)
    app.run()  # a rerun uses the cached cells: no button needed
    no_exceptions(app)
    assert list(app.dataframe[0].value["cell"]) == ["W16 / KV16", "W8", "W2"]


def test_too_many_tokens_for_a_short_upload_is_explained(app):
    open_page(app, "evaluate")
    app.selectbox(key="evaluate_corpus").set_value("upload").run()
    no_exceptions(app)
    assert any("Upload a plain-text file" in info.value for info in app.info)
