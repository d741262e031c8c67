"""Chart defects from the browser walk (issue 22, "Charts"): log axes that labelled their minor ticks with
bare digits, the grid page's quality-vs-size title under its legend, the Memory table's hidden last
column, and the Outliers token heatmap without token names."""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
import re
from itertools import pairwise
from types import SimpleNamespace

import plotly.graph_objects as go
import pytest
import torch

from engine import lessons
from engine.analysis import blocks
from engine.analysis.site_stats import histogram_edges
from engine.evaluation.study import CellResult
from engine.lessons.qat_spiral import SpiralTask, run_qat_demo
from engine.methods.registry import LayerReport
from engine.speed import roofline
from engine.speed.microbench import KernelTiming, LinearShape
from tests.app.conftest import no_exceptions, open_page
from ui import charts
from ui.pages import (
    evaluate_charts,
    lesson_charts,
    memory_charts,
    methods_charts,
    outlier_charts,
    speed_charts,
)

CHART_MODULES = (
    charts,
    evaluate_charts,
    lesson_charts,
    memory_charts,
    methods_charts,
    outlier_charts,
    speed_charts,
)
SHAPE = LinearShape(4096, 4096, names=("q_proj",))


def _timings(speedups: list[float], batches=(1, 4, 16, 64, 256)) -> list[KernelTiming]:
    """Kernel timings of one format whose speed-up over the baseline is `speedups` at each batch."""
    rows = []
    for batch, speedup in zip(batches, speedups, strict=True):
        seconds = 1e-5 * batch**0.5
        rows.append(
            KernelTiming(
                SHAPE,
                batch,
                "W4A16",
                "tinygemm",
                seconds,
                seconds * 1.2,
                2**25,
                2 * batch * 4096**2,
                baseline_kernel_seconds=seconds * speedup,
                baseline_call_seconds=seconds * speedup,
            )
        )
    return rows


def _runs() -> list:
    """Two method runs as the Methods lab holds them: per-layer reports, GPTQ's with RTN's output error."""
    names = [f"model.layers.{i}.mlp.down_proj" for i in range(4)]
    gptq = [
        LayerReport(
            name, 4.1, 20.0, output_error=0.002 * (i + 1), detail=SimpleNamespace(rtn_output_error=0.03)
        )
        for i, name in enumerate(names)
    ]
    rtn = [LayerReport(name, 4.1, 22.0, output_error=0.05 * (i + 1)) for i, name in enumerate(names)]
    return [
        SimpleNamespace(label=label, method=method, layers=layers)
        for label, method, layers in (("GPTQ int4", "GPTQ", gptq), ("RTN int4", "RTN", rtn))
    ]


def _cell(cell: str, axis: str, perplexity: float) -> CellResult:
    return CellResult(cell, axis, perplexity, 12.0, 0.01, 0.1, 0.98, 512, 1.0)


@pytest.fixture(scope="module")
def lesson_inputs():
    activations = lessons.synthetic_activations(batches=4, tokens=16, features=256)
    small_qat = SpiralTask(train_points=600, test_points=300, float_steps=30, hidden=16)
    return dict(
        symmetry=lessons.symmetry_lesson("relu", 4),
        calibration=lessons.calibration_lesson(activations[:2], activations[2:]),
        speed=roofline.speed_lesson("NVIDIA H100 SXM", 4096, 4096, 512),
        qat=run_qat_demo(3, steps=10, seed=0, task=small_qat),
    )


def _log_figures(lesson_inputs) -> dict[str, go.Figure]:
    """Every figure function that draws a log axis, on small real or synthetic inputs."""
    torch.manual_seed(0)
    absmax = torch.rand(128) * 2 + 0.5
    absmax[7] = 300.0
    values = (torch.randn(50_000) * 2).abs()
    edges = histogram_edges()
    contexts = [512, 2048, 8192, 32768, 131072]
    ls = lesson_inputs
    return {
        "symmetry_levels": lesson_charts.symmetry_levels(ls["symmetry"]),
        "mse_vs_bits": lesson_charts.mse_vs_bits(ls["symmetry"]),
        "calibration_ranges": lesson_charts.calibration_ranges(ls["calibration"]),
        "qat_curves": lesson_charts.qat_curves(ls["qat"]),
        "roofline": lesson_charts.roofline(ls["speed"]),
        "speedup_vs_tokens": lesson_charts.speedup_vs_tokens(ls["speed"]),
        "speedup_chart": speed_charts.speedup_chart(_timings([3.1, 2.4, 1.6, 0.9, 0.6]), SHAPE.label, "bf16"),
        "bandwidth_chart": speed_charts.bandwidth_chart(
            _timings([3.1, 2.4, 1.6, 0.9, 0.6]), SHAPE.label, 2e12
        ),
        "output_error": methods_charts.output_error(_runs()),
        "maxima": methods_charts.maxima([0.4, 1.2, 2.3, 0.8], [0.5, 0.9, 1.1, 0.7], "layer 0"),
        "perplexity_bars": evaluate_charts.perplexity_bars(
            [_cell("W8", "weights", 12.1), _cell("W4", "weights", 14.0), _cell("KV4", "kv", 13.2)], 12.0
        ),
        "quality_vs_bits": evaluate_charts.quality_vs_bits(
            [
                dataclasses.replace(_cell("W4 MXFP4", "formats", 14.0), mean_kl=0.21, bits_per_weight=4.25),
                dataclasses.replace(_cell("W4 NVFP4", "formats", 13.1), mean_kl=0.08, bits_per_weight=4.5),
                dataclasses.replace(_cell("W4A4 NVFP4", "formats", 30.0), mean_kl=1.9, bits_per_weight=4.5),
                dataclasses.replace(_cell("W4 Q4_1", "gguf", 12.0), mean_kl=0.0, bits_per_weight=5.0),
            ]
        ),
        "channel_profile": outlier_charts.channel_profile(
            absmax,
            [7],
            "profile",
            "max |X[:, j]|",
            weight=torch.rand(128),
            weight_title="max |W|",
            threshold=6.0,
            log=True,
        ),
        "magnitude_histogram": outlier_charts.magnitude_histogram(
            torch.histogram(values, edges)[0], edges, 6.0, "All values"
        ),
        "context_sweep": memory_charts.context_sweep(
            contexts, {"bf16": [16e9 + 2e5 * c for c in contexts]}, {"H100": 79e9}, 131072
        ),
        "kl_histogram": evaluate_charts.kl_histogram(_drift(), "W4"),
        "histogram_over_levels": lesson_charts.histogram_over_levels(
            values.numpy(), {"int4": torch.linspace(0, 6, 15)}, {"int4": "#1f77b4"}, "t", "x", log_share=True
        ),
    }


def _drift():
    from engine.evaluation.drift import TokenDrift, drift_stats

    kl = torch.tensor([1e-5, 1e-4, 2e-3, 3e-3, 0.05, 0.5, 3.0] * 3)
    zeros = torch.zeros(kl.numel())
    return drift_stats(TokenDrift(kl, zeros, zeros, torch.ones(kl.numel(), dtype=torch.bool)))


def _value(label: str) -> float:
    """What a tick label says, as a number: "0.05", "1,000", "10<sup>-4</sup>", "2×10<sup>6</sup>"."""
    power = re.fullmatch(r"(?:([\d.]+)×)?10<sup>(-?\d+)</sup>", label)
    if power:
        return float(power.group(1) or 1) * 10 ** int(power.group(2))
    return float(label.replace(",", ""))


def _log_axes(figure: go.Figure) -> list:
    return [axis for axis in [*figure.select_xaxes(), *figure.select_yaxes()] if axis.type == "log"]


def test_no_log_axis_labels_its_minor_ticks(lesson_inputs):
    """Each log axis names its ticks itself (plotly's own labels read "2", "5" between decades), and each
    label is the value at its position; three decades or more are labelled at powers of ten only. Every
    public figure function that sets a log axis is among those checked (a new one must join them)."""
    figures = _log_figures(lesson_inputs)
    drawing_log = {
        name
        for module in CHART_MODULES
        for name, function in inspect.getmembers(module, inspect.isfunction)
        if function.__module__ == module.__name__
        and not name.startswith("_")
        and 'type="log"' in inspect.getsource(function)
    }
    assert drawing_log <= set(figures), drawing_log - set(figures)
    for name, figure in figures.items():
        axes = _log_axes(figure)
        assert axes, f"{name}: no log axis"
        for axis in axes:
            assert axis.tickmode == "array" and axis.tickvals, (
                f"{name}: {axis.title.text!r} has plotly's ticks"
            )
            assert len(axis.tickvals) == len(axis.ticktext) >= 2, name
            for position, label in zip(axis.tickvals, axis.ticktext, strict=True):
                assert math.isclose(_value(label), position, rel_tol=1e-9), (name, position, label)
            decades = [math.isclose(math.log10(v), round(math.log10(v)), abs_tol=1e-9) for v in axis.tickvals]
            if not all(decades):  # 1-2-5 ticks only where the axis spans under three decades
                assert max(axis.tickvals) / min(axis.tickvals) < 1000, (name, axis.tickvals)


def test_log_axes_spanning_under_three_decades_show_real_values_inside_the_data():
    """1-2-5 inside a short span, a finer even step inside a very short one: at least two labels that the
    plot shows (inside the data's span), each with its real value."""
    for values, expected in (
        ([0.35, 2.3], [0.5, 1, 2]),
        ([12.0, 70.0], [20, 50]),
        ([1.02, 1.21], [1.05, 1.1, 1.15, 1.2]),
    ):
        figure = charts.decade_ticks(go.Figure(go.Scatter(x=[1, 2], y=values)).update_yaxes(type="log"))
        assert list(figure.layout.yaxis.tickvals) == pytest.approx(expected)
        assert [_value(t) for t in figure.layout.yaxis.ticktext] == pytest.approx(expected)


def test_speed_batch_axis_is_labelled_with_the_batch_sizes():
    figure = speed_charts.speedup_chart(_timings([3.1, 2.4, 1.6, 0.9, 0.6]), SHAPE.label, "bf16")
    assert list(figure.layout.xaxis.tickvals) == [1, 4, 16, 64, 256]
    assert list(figure.layout.xaxis.ticktext) == ["1", "4", "16", "64", "256"]
    assert figure.layout.xaxis.dtick is None
    assert list(figure.layout.yaxis.ticktext) == ["1", "2"]  # the speed-up, 0.6x to 3.1x: 1-2-5 inside


def test_pareto_legend_sits_below_the_plot_not_in_the_title_band():
    torch.manual_seed(0)
    rows = blocks.scheme_table(torch.randn(32, 128), blocks.standard_schemes())
    figure = charts.pareto(rows, rows[0]["scheme"])
    legend = figure.layout.legend
    assert legend.y < 0 and legend.yanchor == "top"  # under the x axis; the title is above the plot
    assert len({row["format"] for row in rows}) >= 3 and len(figure.data) >= 4  # a legend worth placing
    assert len(figure.layout.title.text) <= 30  # fits the grid page's narrow chart column


def test_memory_table_shows_every_column_within_a_1280_pixel_window(app):
    """At 1280 px the page's content is 820 px wide beside the 300 px sidebar (measured in Chromium): the
    summary table's columns are given widths that add up to less, so decode tok/s, the last, is visible."""
    open_page(app, "memory")
    no_exceptions(app)
    table = app.dataframe[0]
    columns = list(table.value.columns)
    assert columns[-1] == "decode tok/s" and (table.value["decode tok/s"] > 0).all()
    config = json.loads(table.proto.columns)
    widths = [config[column]["width"] for column in columns]
    assert all(isinstance(width, int) for width in widths) and sum(widths) <= 800
    assert (
        config["decode tok/s"]["label"] == "tok/s"
        and "Decode tokens per second" in config["decode tok/s"]["help"]
    )


def _heatmap_ticks(figure: go.Figure) -> dict[int, str]:
    axis = figure.layout.yaxis
    assert axis.showticklabels is not False and axis.tickmode == "array"
    assert list(axis.tickvals) == list(axis.ticktext)
    rows = list(figure.data[0].y)
    return {rows.index(label): label for label in axis.ticktext}


def test_token_heatmap_names_its_rows_with_the_tokens():
    torch.manual_seed(0)
    tokens = ["<s>", " The", " quick", "\\n", " fox", "&", " jumps", " over"]
    figure = outlier_charts.token_channel(torch.randn(8, 32), tokens, "8 tokens", surface=False)
    assert _heatmap_ticks(figure) == {
        0: "0 ▸ &lt;s&gt;",  # escaped: plotly would read "<s>" as markup
        1: "1 ▸ The",
        2: "2 ▸ quick",
        3: "3 ▸ \\n",
        4: "4 ▸ fox",
        5: "5 ▸ &amp;",
        6: "6 ▸ jumps",
        7: "7 ▸ over",
    }


def test_long_token_samples_label_a_spread_and_always_the_massive_activation():
    torch.manual_seed(0)
    sample = torch.randn(64, 96)
    sample[37, 11] = 500.0  # one token carries a massive activation
    tokens = [f"tok{i}" for i in range(64)]
    tokens[37] = " supercalifragilistic"
    ticks = _heatmap_ticks(outlier_charts.token_channel(sample, tokens, "64 tokens", surface=False))
    assert ticks[37] == "37 ▸ supercalifr…"
    assert 20 <= len(ticks) <= outlier_charts.TOKEN_TICKS
    assert all(label == f"{row} ▸ tok{row}" for row, label in ticks.items() if row != 37)
    assert max(b - a for a, b in pairwise(sorted(ticks))) <= 4  # no long unlabelled stretch


def test_outliers_page_heatmap_rows_carry_the_sampled_tokens(app):
    """On the real page (default model, a small collection) the heatmap's rows are named by the text."""
    open_page(app, "outliers")
    app.number_input(key="outliers_windows").set_value(1)
    app.select_slider(key="outliers_window").set_value(64)
    app.button(key="outliers_collect").click().run()
    if "outliers_collect_job" in app.session_state:  # collected in the background (none cached yet)
        assert app.session_state["outliers_collect_job"].wait(120)
        app.run()
    no_exceptions(app)
    heatmaps = [
        go.Figure(json.loads(chart.proto.spec))
        for chart in app.get("plotly_chart")
        if "|x| of the first" in json.loads(chart.proto.spec)["layout"].get("title", {}).get("text", "")
    ]
    assert heatmaps
    ticks = _heatmap_ticks(heatmaps[0])
    assert len(ticks) >= 20 and all(label.startswith(f"{row} ▸ ") for row, label in ticks.items())
    assert (
        sum(any(c.isalpha() for c in label.split(" ▸ ", 1)[1]) for label in ticks.values()) >= len(ticks) // 2
    )
