"""The Methods lab under AppTest: RTN and LLM.int8() on the default model, results kept in the session."""

from __future__ import annotations

from tests.app.conftest import no_exceptions, open_page


def test_methods_lab_runs_two_methods_and_keeps_them(app):
    open_page(app, "methods")
    assert any("Press **Run**" in info.value for info in app.info)
    app.multiselect(key="methods_pick").set_value(["RTN", "LLM.int8()"]).run()
    app.number_input(key="methods_eval_windows").set_value(1).run()
    app.number_input(key="methods_calib_windows").set_value(1).run()
    app.select_slider(key="methods_calib_tokens").set_value(128).run()
    app.button(key="methods_run").click().run()
    no_exceptions(app)
    table = app.dataframe[0].value
    assert len(table) == 2
    rtn = table[table["method"].str.startswith("RTN")].iloc[0]
    assert abs(rtn["bits/weight (linears)"] - 4.25) < 1e-6  # int4 g64 with fp16 scales
    assert all(table["top-1 agreement"] > 0.3)
    assert len(app.get("plotly_chart")) >= 2
    app.run()  # kept in the session: no rerun of the methods
    no_exceptions(app)
    assert len(app.dataframe[0].value) == 2
    app.button(key="methods_clear").click().run()
    no_exceptions(app)
    assert not app.dataframe
