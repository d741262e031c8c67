"""The Learn page under AppTest: every tab renders (tabs run together), every control changes its takeaway,
the QAT button trains, and nothing raises."""

from __future__ import annotations

import ui.cache.lessons
from engine.models.sources import ModelSourceError
from tests.app.conftest import no_exceptions, open_page


def _takeaways(app) -> list[str]:
    return [info.value for info in app.info]


def _takeaway(app, needle: str) -> str:
    found = [text for text in _takeaways(app) if needle in text]
    assert found, (needle, _takeaways(app))
    return found[0]


def _metric(app, label: str) -> str:
    return next(metric.value for metric in app.metric if metric.label == label)


def test_learn_page_opens_with_every_lesson(app):
    open_page(app, "learn")
    assert [tab.label for tab in app.tabs] == [
        "Linear vs quantile grids",
        "Symmetric vs asymmetric",
        "Granularity",
        "PTQ & calibration",
        "QAT & the STE",
        "Why not faster?",
        "Today's formats",
        "Outliers and rotation",
    ]
    assert "NF4's MSE is" in _takeaway(app, "On gaussian data in blocks of 64")
    assert "asymmetric int4 has" in _takeaway(app, "On ReLU outputs")
    assert "extra bits per weight" in _takeaway(app, "Groups of 64")
    assert _takeaway(app, "Static int4")
    assert "memory-bound" in _takeaway(app, "At 1 token")
    assert any("model.layers.3.mlp.down_proj" in caption.value for caption in app.caption)
    assert not any("QAT steps" in text for text in _takeaways(app)), "QAT waits for the button"


def test_first_three_tabs_follow_their_controls(app):
    open_page(app, "learn")
    app.segmented_control(key="learn_map_dist").set_value("uniform").run()
    app.select_slider(key="learn_map_block").set_value(256).run()
    no_exceptions(app)
    assert "int4's MSE is" in _takeaway(app, "On uniform data in blocks of 256")

    app.segmented_control(key="learn_sym_data").set_value("gaussian").run()
    app.select_slider(key="learn_sym_bits").set_value(8).run()
    no_exceptions(app)
    assert "within 10%" in _takeaway(app, "On Gaussian (two-sided)")

    before = _takeaway(app, "Groups of 64")
    app.segmented_control(key="learn_gran_bits").set_value(8).run()
    app.slider(key="learn_gran_outliers").set_value(0).run()
    app.slider(key="learn_gran_size").set_value(50.0).run()
    no_exceptions(app)
    after = _takeaway(app, "Groups of 64")
    assert after != before and "(8.250 vs 8.000)." in after


def test_calibration_tab_real_layers_and_synthetic(app):
    open_page(app, "learn")
    app.slider(key="learn_ptq_layer").set_value(29).run()
    app.select_slider(key="learn_ptq_bits").set_value(8).run()
    no_exceptions(app)
    assert _takeaway(app, "Static int8")
    assert any("model.layers.29.mlp.down_proj" in caption.value for caption in app.caption)
    app.segmented_control(key="learn_ptq_source").set_value("Synthetic").run()
    app.select_slider(key="learn_ptq_bits").set_value(4).run()
    no_exceptions(app)
    assert "lower MSE than min-max" in _takeaway(app, "Static int4")
    assert any("synthetic heavy-tailed" in caption.value for caption in app.caption)


def test_qat_button_trains_and_reports(app):
    open_page(app, "learn")
    app.segmented_control(key="learn_qat_bits").set_value(3).run()
    app.slider(key="learn_qat_steps").set_value(100).run()
    app.number_input(key="learn_qat_seed").set_value(0).run()
    app.button(key="learn_qat_run").click().run()
    no_exceptions(app)
    text = _takeaway(app, "At 3 bits")
    assert "100 QAT steps" in text
    ptq, qat = (float(_metric(app, label).rstrip("%")) for label in ("PTQ int3", "QAT int3"))
    assert qat > ptq + 20
    assert float(_metric(app, "Float accuracy").rstrip("%")) > 97
    assert any("Gradient check" in block.value for block in app.markdown)
    app.run()  # a rerun keeps the cached report on screen
    assert _takeaway(app, "At 3 bits") == text


def test_speed_tab_controls(app):
    open_page(app, "learn")
    app.selectbox(key="learn_speed_device").set_value("NVIDIA A100 80GB SXM").run()
    app.selectbox(key="learn_speed_layer").set_value("SmolLM2-135M down_proj (1536 → 576)").run()
    app.select_slider(key="learn_speed_tokens").set_value(1).run()
    no_exceptions(app)
    text = _takeaway(app, "At 1 token")
    assert "ridge 153" in text and "Raise the token count" in text
    app.select_slider(key="learn_speed_tokens").set_value(8192).run()
    assert "At 8,192 tokens it is compute-bound and int4 is" in _takeaway(app, "At 1 token")


def test_formats_tab_measures_a_real_weight_and_shows_the_table(app):
    open_page(app, "learn")
    assert app.slider(key="learn_fmt_layer").value == 3
    assert any("model.layers.3.mlp.down_proj.weight, 576 rows of 1,536" in c.value for c in app.caption)
    assert [h.value for h in app.subheader if h.value[0].isdigit()][:5] == [
        "1. Why block scales",
        "2. The E2M1 element",
        "3. The scale's own format",
        "4. llama.cpp's k-quants",
        "5. Bits per weight, and where each format runs natively",
    ]
    assert "lower with groups of 32" in _takeaway(app, "sets the per-channel step")
    assert "E2M1's error is" in _takeaway(app, "of this weight's values sit in the inner half")
    assert "lower than MXFP4's" in _takeaway(app, "MXFP4's power-of-two scale clips")
    assert "already stored on a 4-bit grid" in _takeaway(app, "Same 4.5 bits per weight")
    assert "run natively, on Blackwell" in _takeaway(app, "The 4-bit formats all cost")
    q4_0, q4_k = (float(_metric(app, f"{name} SQNR, this weight").split()[0]) for name in ("Q4_0", "Q4_K"))
    assert q4_k > q4_0
    table = next(frame.value for frame in app.dataframe if "runs natively on" in frame.value.columns)
    assert table["format"].tolist() == ["int4 g32", "MXFP4", "NVFP4", "Q4_0", "Q4_K", "MXFP8", "Q8_0"]
    assert table.set_index("format")["bits/weight"].to_dict() == {
        "int4 g32": "4.5",
        "MXFP4": "4.25",
        "NVFP4": "4.5 (+32 per tensor)",
        "Q4_0": "4.5",
        "Q4_K": "4.5",
        "MXFP8": "8.25",
        "Q8_0": "8.5",
    }


def test_outliers_tab_follows_the_outlier_to_rotation(app):
    open_page(app, "learn")
    assert [h.value for h in app.subheader if h.value[0].isdigit()][-4:] == [
        "1. One channel towers over the rest",
        "2. A couple of weights make it",
        "3. Why one scale per token fails",
        "4. Rotation spreads the energy, and 4-bit works",
    ]
    assert "channel 507 of the token at position 0" in _takeaway(app, "From layer 11 on")
    assert "zeroing 2 random ones" in _takeaway(app, "Zeroing these 2 weights of 884,736")
    assert any("(507, 1229), (507, 1487)" in block.value for block in app.markdown)
    assert "round to zero" in _takeaway(app, "With one int4 scale for this token, channel 507")
    assert "lower; √576 = 24" in _takeaway(app, "The rotation brings the largest max / RMS")
    specs = [chart.proto.spec for chart in app.get("plotly_chart")]
    for title in (
        "The residual stream after each layer",
        "Perplexity on this window",
        "One token's 576 channels",
    ):
        assert any(title in spec for spec in specs), title
    assert any("before and after the rotation" in spec for spec in specs)


def test_formats_tab_says_why_without_a_model(app, monkeypatch):
    def unreadable():
        raise ModelSourceError("no model here")

    monkeypatch.setattr(ui.cache.lessons, "real_projection_names", unreadable)
    open_page(app, "learn")
    assert any("This lesson measures a real weight" in error.value for error in app.error)
    assert not any("The 4-bit formats all cost" in text for text in _takeaways(app))
