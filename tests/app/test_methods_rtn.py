"""The Methods lab's RTN form takes today's formats by name, with or without the activations."""

from __future__ import annotations

from tests.app.conftest import no_exceptions, open_page


def test_rtn_runs_nvfp4_weights_and_activations(app):
    open_page(app, "methods")
    app.multiselect(key="methods_pick").set_value(["RTN"]).run()
    assert app.selectbox(key="methods_rtn_format").options[0].startswith("int")
    app.selectbox(key="methods_rtn_format").set_value("nvfp4").run()
    app.checkbox(key="methods_rtn_acts").check().run()
    app.number_input(key="methods_eval_windows").set_value(1).run()
    app.button(key="methods_run").click().run()
    no_exceptions(app)
    assert app.session_state["methods_job"].wait(300), "the run did not finish"  # a background job
    app.run()
    no_exceptions(app)
    row = app.dataframe[0].value.iloc[0]
    assert row["method"] == "RTN nvfp4 + activations"
    assert abs(row[next(c for c in row.index if c.startswith("bits/weight"))] - 4.5) < 1e-3  # +32 bits/tensor
    assert row["top-1 agreement"] < 0.95  # 4-bit activations move the predictions
