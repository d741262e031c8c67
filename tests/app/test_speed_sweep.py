"""The Speed page's measured context sweep under AppTest."""

from __future__ import annotations

from tests.app.conftest import no_exceptions, open_page


def test_the_speed_page_runs_a_sweep_and_keeps_it(app):
    """The reference and its bf16 copy, two contexts, charts, table and CSV, shown again on a rerun."""
    app = open_page(app, "speed")
    assert "fp32" not in app.multiselect(key="speed_sweep_variants").options  # the reference is the model
    app.multiselect(key="speed_sweep_variants").set_value(["reference (loaded model)", "bf16"])
    app.multiselect(key="speed_sweep_contexts").set_value([16, 32])
    app.number_input(key="speed_sweep_new_tokens").set_value(2)
    app.radio(key="speed_sweep_generator").set_value("Transformers generate")
    app.button(key="speed_sweep_run").click().run()
    no_exceptions(app)
    table = app.dataframe[-1].value
    assert list(table["variant"]) == ["reference (loaded model)"] * 2 + ["bf16"] * 2
    assert list(table["context"]) == [16, 32, 16, 32]
    assert (table["decode tok/s"] > 0).all() and (table["prefill tok/s"] > 0).all()
    assert table["weights MiB estimated"].notna().all() and "CUDA peak MiB" not in table.columns
    assert any("Transformers generate, 2 new tokens" in c.value for c in app.caption)
    charts = app.get("plotly_chart")
    assert len(charts) == 2
    assert len(app.get("download_button")) == 1
    app.run()  # a rerun shows the kept results without running again
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == 2 and list(app.dataframe[-1].value["context"]) == [16, 32, 16, 32]
