"""The grid page under AppTest: widget changes change the numbers; bad schemes are clear errors."""

from __future__ import annotations

import pytest

from tests.app.conftest import no_exceptions, open_page


def _metric(app, label):
    return next(metric.value for metric in app.metric if metric.label == label)


def _table_schemes(app):
    """The all-schemes table's schemes (a format's packed-block table may come before it)."""
    return next(list(frame.value["scheme"]) for frame in app.dataframe if "scheme" in frame.value.columns)


def test_grid_page_default_model_warns_about_prior_grid(app):
    open_page(app, "grid")
    assert any("already sits on a low-bit grid" in warning.value for warning in app.warning)
    assert _metric(app, "Bits per weight") == "4.250"  # int4 sym g64, fp16 scale
    assert len(_table_schemes(app)) >= 40


def test_changing_bits_and_granularity_changes_the_numbers(app):
    open_page(app, "grid")
    before = float(_metric(app, "SQNR").split()[0])
    app.select_slider(key="qe_scheme_bits").set_value(8).run()
    no_exceptions(app)
    after_bits = float(_metric(app, "SQNR").split()[0])
    assert after_bits > before + 15  # int8 vs int4: ~6 dB per bit
    app.radio(key="qe_scheme_granularity").set_value("tensor").run()
    no_exceptions(app)
    assert _metric(app, "Bits per weight") == "8.000"
    assert float(_metric(app, "SQNR").split()[0]) < after_bits


def test_synthetic_outlier_demo(app):
    open_page(app, "grid")
    app.segmented_control(key="grid_source").set_value("Synthetic").run()
    no_exceptions(app)
    app.radio(key="qe_scheme_granularity").set_value("tensor").run()
    per_tensor = float(_metric(app, "SQNR").split()[0])
    app.radio(key="qe_scheme_granularity").set_value("group").run()
    per_group = float(_metric(app, "SQNR").split()[0])
    assert per_group > per_tensor + 5


def test_group_size_that_does_not_divide_is_explained(app):
    open_page(app, "grid")
    app.segmented_control(key="grid_source").set_value("Synthetic").run()  # 512 columns: 96 fits the model
    app.select_slider(key="qe_scheme_group").set_value(96).run()
    no_exceptions(app)
    assert any("does not divide this tensor's rows of 512 values" in error.value for error in app.error)


def test_other_layer_and_weight(app):
    open_page(app, "grid")
    first = _metric(app, "MSE")
    app.selectbox(key="grid_layer").set_value("layer 29").run()
    no_exceptions(app)
    app.selectbox(key="grid_weight").select_index(6).run()  # down_proj, 576 x 1536
    no_exceptions(app)
    assert _metric(app, "MSE") != first
    app.slider(key="grid_row").set_value(575).run()
    app.slider(key="grid_block").set_value(23).run()
    no_exceptions(app)
    assert _metric(app, "Clipped in block").endswith("/ 64")


def test_activations_need_collected_statistics_then_show_a_real_sample(app):
    open_page(app, "grid")
    app.segmented_control(key="grid_source").set_value("Activation").run()
    no_exceptions(app)
    if any("Collect statistics" in info.value for info in app.info):  # nothing collected in this process yet
        app.switch_page("pages/outliers.py").run()
        app.number_input(key="outliers_windows").set_value(2)
        app.select_slider(key="outliers_window").set_value(64)
        app.button(key="outliers_collect").click().run()
        if "outliers_collect_job" in app.session_state:  # collected in the background
            assert app.session_state["outliers_collect_job"].wait(120)
            app.run()
        no_exceptions(app)
        app.switch_page("pages/grid.py").run()
        app.segmented_control(key="grid_source").set_value("Activation").run()
    no_exceptions(app)
    assert any("tokens collected" in caption.value for caption in app.caption)
    app.selectbox(key="grid_act_layer").set_value(11).run()
    residual = next(
        site for site in app.selectbox(key="grid_act_site").options if site.startswith("residual")
    )
    app.selectbox(key="grid_act_site").set_value(residual).run()
    app.radio(key="qe_scheme_granularity").set_value("tensor").run()
    no_exceptions(app)
    per_tensor = float(_metric(app, "SQNR").split()[0])
    app.radio(key="qe_scheme_granularity").set_value("channel").run()  # one scale per token
    per_token = float(_metric(app, "SQNR").split()[0])
    # Channel #507 (~26,000 at layer 11) holds most of the residual's energy in every token, so one scale
    # per token barely beats one per tensor: outlier *channels* need per-channel handling (SmoothQuant).
    assert per_token >= per_tensor
    assert float(_metric(app, "Max abs error")) > 10


def _pick_microscaling(app, element, group, scale):
    """The sidebar's controls for a microscaling preset: its element, its block size and its scale."""
    app.selectbox(key="qe_scheme_format").set_value(element).run()
    app.radio(key="qe_scheme_granularity").set_value("group").run()
    app.select_slider(key="qe_scheme_group").set_value(group).run()
    app.selectbox(key="qe_scheme_scale_dtype").set_value(scale).run()
    no_exceptions(app)


def _scale_chart(app):
    import json

    return [
        chart
        for chart in app.get("plotly_chart")
        if "Block scales" in json.loads(chart.proto.spec)["layout"]["title"]["text"]
    ]


@pytest.mark.parametrize(
    ("element", "group", "scale", "label", "nbytes"),
    [("fp4_e2m1", 32, "e8m0", "mxfp4", 17), ("fp4_e2m1", 16, "e4m3", "nvfp4", 9)],
)
def test_microscaling_scheme_shows_block_scales_and_a_packed_block(app, element, group, scale, label, nbytes):
    open_page(app, "grid")
    _pick_microscaling(app, element, group, scale)
    assert any(markdown.value.startswith(f"**{label}**") for markdown in app.markdown)
    assert _scale_chart(app), "no block-scale chart"
    assert _metric(app, "Saturated in block").endswith(f"/ {group}")
    packed = app.dataframe[0].value  # the block's bytes come before the all-schemes table
    assert list(packed.columns) == ["bytes", "holds", "hex", "reads as"]
    assert packed["bytes"].iloc[0] == "0" and packed["holds"].iloc[0].startswith("block scale")
    assert packed["bytes"].iloc[1] == f"1–{nbytes - 1}"
    assert ("per tensor" in set(packed["bytes"])) == (label == "nvfp4")
    app.segmented_control(key="grid_scales_of").set_value("This row").run()
    no_exceptions(app)
    assert _scale_chart(app)


def test_gguf_type_from_the_sidebar_shows_a_q4_k_block(app, monkeypatch):
    """The sidebar will hand the page a GGUFType; until it does, the page's reader is patched to."""
    from engine.quant.gguf import Q4_K
    from ui import state

    monkeypatch.setattr(state, "scheme", lambda: Q4_K)
    open_page(app, "grid")
    # layer 1's first weight has rows of 576: not a multiple of 256, and llama.cpp's fallback is named
    assert any("this tensor's rows hold 576" in e.value and "as Q5_0 instead" in e.value for e in app.error)
    app.selectbox(key="grid_weight").select_index(6).run()  # down_proj, rows of 1536
    no_exceptions(app)
    assert _metric(app, "Bits per weight") == "4.500"
    assert _metric(app, "Clipped in block").endswith("/ 32")
    assert any(sub.value == "The bytes of this Q4_K super-block" for sub in app.subheader)
    packed = app.dataframe[0].value
    assert list(packed["bytes"]) == ["0–1", "2–3", "4–15", "16–143"]
    app.slider(key="grid_block").set_value(13).run()  # super-block 1, sub-block 5
    no_exceptions(app)
    assert any("sub-block 5" in caption.value for caption in app.caption)
    ranking = _table_schemes(app)
    assert {"mxfp4", "nvfp4", "int4 g32", "Q4_K", "Q4_0", "Q8_0", "Q6_K", "mxfp8_e4m3"} <= set(ranking)
