"""Click-through (issue 21): a clicked chart point maps to a tensor and the grid page's widget values, and the
grid page opened with those values shows that tensor with an "Opened from" note and a way back.

AppTest cannot click a Plotly chart, so the point -> values mapping is tested on the real figures' customdata,
and the page is opened with the values a click leaves (the browser test clicks for real)."""

from __future__ import annotations

import pytest
import torch

from engine.analysis.tensors import weight_tensors
from engine.quant.schemes import parse_label
from tests.app.conftest import no_exceptions, open_page
from ui import clickthrough
from ui.pages import outlier_charts


def _event(customdata) -> dict:
    """A chart event as st.plotly_chart returns it after a click on one point."""
    return {"selection": {"points": [{"curve_number": 1, "point_index": 0, "customdata": customdata}]}}


@pytest.fixture(scope="module")
def weights(default_loaded):
    return weight_tensors(default_loaded.model)


def test_heatmap_cell_opens_that_weight_under_the_scheme(weights):
    down = next(w for w in weights if w.layer == 3 and w.module == "down_proj")
    targets = {("down_proj", 3): clickthrough.tensor_customdata("weight", 3, "down_proj", down.shape)}
    figure = outlier_charts.layer_heatmap(
        ["down_proj"], [3], torch.tensor([[7.0]]), "Weights", False, targets
    )
    overlay = figure.data[-1]  # the invisible markers that make the heatmap's cells clickable
    assert overlay.type == "scatter" and list(overlay.x) == [3] and list(overlay.y) == ["down_proj"]
    target = clickthrough.clicked_target(_event(list(overlay.customdata[0])))
    assert target == clickthrough.WeightTarget(3, "down_proj", (576, 1536))
    params = clickthrough.grid_params(target, parse_label("int4 g64"), weights)
    assert params == {"grid_source": "Model weight", "grid_layer": "layer 3", "grid_weight": down}
    assert clickthrough.url_text(params["grid_weight"]) == "model.layers.3.mlp.down_proj.weight"


def test_channel_bar_opens_its_row_or_block(weights):
    """An input channel lands in the block that holds it under the scheme; an output channel is its row."""
    data = clickthrough.tensor_customdata("weight", 5, "q_proj", (576, 576), None, 200)
    params = clickthrough.grid_params(
        clickthrough.clicked_target(_event(data)), parse_label("int4 g64"), weights
    )
    assert (
        params["grid_block"] == 200 // 64 and "grid_row" not in params and params["grid_layer"] == "layer 5"
    )
    data = clickthrough.tensor_customdata("weight", 5, "q_proj", (576, 576), 300, None)
    params = clickthrough.grid_params(clickthrough.clicked_target(_event(data)), parse_label("int4"), weights)
    assert params["grid_row"] == 300 and "grid_block" not in params  # per-channel: one block per row
    site = clickthrough.tensor_customdata("site", 2, "model.layers.2", (64, 576), None, 507)
    params = clickthrough.grid_params(clickthrough.clicked_target(_event(site)), parse_label("int8 g32"), [])
    assert params == {
        "grid_source": "Activation",
        "grid_act_layer": 2,
        "grid_act_site": "model.layers.2",
        "grid_block": 507 // 32,
    }


def test_points_without_a_tensor_open_nothing():
    assert clickthrough.clicked_target(None) is None
    assert clickthrough.clicked_target({"selection": {"points": []}}) is None
    assert clickthrough.clicked_target(_event(None)) is None  # the "worst in layer" line, a plain bar
    rows = [{"layer": 1, "kind": "weight", "tensor": "q_proj", "SQNR (dB)": 20.0, "target": ["weight"] * 7}]
    figure = outlier_charts.sensitivity(rows, rows, "int4")
    assert list(figure.data[0].customdata) == [["weight"] * 7]


def test_grid_page_opened_from_a_click_shows_the_tensor_and_the_way_back(app, weights):
    open_page(app, "outliers")  # the origin page, to go back to
    down = next(w for w in weights if w.layer == 11 and w.module == "down_proj")
    app.session_state[clickthrough.PENDING] = {
        "page": clickthrough.GRID_PAGE,
        "values": {
            "grid_source": "Model weight",
            "grid_layer": "layer 11",
            "grid_weight": down,
            "grid_row": 9999,
        },
    }
    app.session_state[clickthrough.BACK] = {"id": "outliers:weights", "query": {"outliers_windows": "2"}}
    app.query_params["from"] = "outliers:weights"
    app.switch_page(clickthrough.GRID_PAGE).run()
    no_exceptions(app)
    assert app.selectbox(key="grid_layer").value == "layer 11"
    assert app.selectbox(key="grid_weight").value.name == "model.layers.11.mlp.down_proj.weight"
    assert app.slider(key="grid_row").value == 575  # a row past the end is brought to the last one
    assert any("Opened from Outliers: the weights heatmap" in info.value for info in app.info)
    app.button(key="qe_clickthrough_back").click().run()
    no_exceptions(app)
    assert app.number_input(key="outliers_windows").value == 2  # the origin's widgets are put back


def test_unknown_origin_shows_no_note(app):
    app.query_params["from"] = "../../etc"
    open_page(app, "grid")
    assert not any("Opened from" in info.value for info in app.info)


def test_methods_and_evaluate_charts_carry_what_a_click_opens(weights):
    from types import SimpleNamespace

    from engine.methods.registry import LayerReport
    from ui.pages import evaluate_charts, methods_charts

    run = SimpleNamespace(
        label="RTN", method="RTN", layers=[LayerReport("model.layers.2.mlp.down_proj", 4.25, 20.0)]
    )
    figure = methods_charts.per_layer_error([run], clickthrough.weight_points(weights))
    assert "markers" in figure.data[0].mode  # plotly selects no point on a bare line
    target = clickthrough.clicked_target(_event(list(figure.data[0].customdata[0])))
    assert target == clickthrough.WeightTarget(2, "down_proj", (576, 1536))
    rows = [
        {
            "cell": "W16 / KV16",
            "axis": "reference",
            "relative_change": 0.0,
            "mean_kl": 0.0,
            "top1_agreement": 1.0,
        },
        {"cell": "W4", "axis": "weights", "relative_change": 0.1, "mean_kl": 0.05, "top1_agreement": 0.8},
    ]
    overlay = evaluate_charts.grid_heatmap(rows).data[-1]
    assert {tuple(data[:2]) for data in overlay.customdata} == {(clickthrough.VARIANT_TAG, "W4")}  # 3 metrics


def test_memory_formats_map_to_the_speed_pages_variants():
    assert clickthrough.speed_params("int4-g128", "cpu") == {
        "speed_variants": ["W4A16"],
        "speed_formats": ["W4A16"],
    }
    assert clickthrough.speed_params("bf16", "cpu") == {"speed_variants": ["bf16"], "speed_formats": ["bf16"]}
    assert clickthrough.speed_params("mxfp4", "cpu") == {}  # no kernel on the Speed page runs it


def test_speed_page_opened_from_a_memory_row_picks_that_variant(app):
    app.session_state[clickthrough.PENDING] = {
        "page": clickthrough.SPEED_PAGE,
        "values": clickthrough.speed_params("int8", "cpu"),
    }
    app.query_params["from"] = "memory:summary"
    open_page(app, "speed")
    assert app.multiselect(key="speed_variants").value == ["W8A16"]
    assert app.multiselect(key="speed_formats").value == ["W8A16"]
    assert any("Opened from Memory sizing: the summary table" in info.value for info in app.info)
