"""The Speed page under AppTest: a small microbenchmark and a short decode run through three decode loops,
with their charts."""

from __future__ import annotations

from tests.app.conftest import no_exceptions, open_page


def test_speed_page_runs_a_microbenchmark_and_a_decode(app):
    open_page(app, "speed")
    assert any("CPU kernels" in info.value for info in app.info)  # the honest note
    assert not app.get("plotly_chart")  # nothing runs until asked

    shapes = app.multiselect(key="speed_shapes")
    app.multiselect(key="speed_shapes").set_value([shapes.options[-1]])  # the smallest: k/v 192×576
    app.multiselect(key="speed_batches").set_value([1, 4])
    app.number_input(key="speed_repeats").set_value(3)
    app.button(key="speed_run_kernels").click().run()
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == 2  # speed-up and GB/s
    table = app.dataframe[0].value
    assert set(table["batch"]) == {1, 4}
    assert {"fp32", "W4A16", "W8A16", "W8A8", "NF4 (bnb)", "LLM.int8 (bnb)"} <= set(table["format"])
    assert (table["µs"] > 0).all()

    assert "NF4 (bnb)" in app.multiselect(key="speed_variants").options
    app.multiselect(key="speed_variants").set_value(["fp32", "W4A16", "NF4 (bnb)"])
    assert app.multiselect(key="speed_loops").value == ["dynamic cache", "static cache"]  # CPU default
    app.multiselect(key="speed_loops").set_value(["dynamic cache", "static + compile"]).run()
    assert any("no CUDA graphs" in caption.value for caption in app.caption)  # said before it runs
    loops = ["dynamic cache", "transformers generate", "static cache"]  # compiling takes a minute here
    app.multiselect(key="speed_loops").set_value(loops)
    app.number_input(key="speed_prompt_tokens").set_value(8)
    app.number_input(key="speed_new_tokens").set_value(4)
    app.button(key="speed_run_decode").click().run()
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == 4  # the kernel charts stay, decode and prefill join them
    decode = app.dataframe[-1].value
    assert list(decode["variant"]) == ["fp32"] * 3 + ["W4A16"] * 3 + ["NF4 (bnb)"] * 3
    assert list(decode["loop"]) == loops * 3
    # every loop is greedy: one variant, one answer (int4's bfloat16 kernel can tip a near-tie, so fp32)
    assert decode[decode["variant"] == "fp32"]["same tokens"].all()
    assert (decode["decode tok/s"] > 0).all() and (decode["roofline tok/s"] > 0).all()
    assert (decode["compile s"] == 0).all()
    assert any(metric.label == "Measured copy bandwidth" for metric in app.metric)
