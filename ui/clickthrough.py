"""Click-through: a click on a chart point or a table row opens the page that answers the next question, with
its widgets pre-selected, and that page says where it was opened from, with a button back.

How it works: a chart's clickable points carry `customdata` that names their tensor (`tensor_customdata`);
`clicked_target` turns a selected point back into a typed target (`WeightTarget`, `SiteTarget`) and
`grid_params` into the grid page's widget values (its session-state keys, which are also the URL parameter
names). `open_view` keeps those values as the target page's pending values, remembers the origin page's own
widget values for the way back, and `st.switch_page`s with the values in the URL plus `from`, the origin's
short id. The target page calls `origin_note(page)` right after `ui.page.start` and before its widgets: it
applies the pending values and shows the "Opened from ..." note. A link alone (no pending values) is restored
by ui/links.py; nothing is loaded or run by a click-through, only widget values are set.

Plotly heatmaps report no selection in Streamlit (streamlit#8760), so `selectable_cells` lays invisible
markers over a heatmap's cells; a click on a cell selects its marker.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import plotly.graph_objects as go
import streamlit as st

from engine.analysis.blocks import block_count
from engine.analysis.tensors import WeightInfo
from engine.quant.gguf import GGUFType
from engine.quant.schemes import QuantScheme
from ui import cache, state

PENDING = "qe_clickthrough_pending"  # {"page": path, "values": {widget key: value}} for the next page
BACK = "qe_clickthrough_origin"  # {"id": origin id, "query": the origin page's URL parameters at the click}
GRID_PAGE = "pages/grid.py"
COMPARE_PAGE = "pages/compare.py"
SPEED_PAGE = "pages/speed.py"
VARIANT_TAG = "variant"  # customdata [VARIANT_TAG, Compare variant key, ...]: a point that opens Compare
WEIGHT_SOURCE, ACTIVATION_SOURCE = "Model weight", "Activation"  # the grid page's "Tensor" choices
HEAD_LAYER = "embeddings / head"  # the grid page's layer choice for weights outside the decoder layers


class Origin(NamedTuple):
    page: str  # script path for st.switch_page
    page_title: str  # the page's name in the navigation
    view: str  # the chart or table clicked, in words


OUTLIERS = "pages/outliers.py"
ORIGINS: dict[str, Origin] = {  # the `from` URL parameter -> where a click-through came from
    "outliers:weights": Origin(OUTLIERS, "Outliers", "the weights heatmap"),
    "outliers:weight-channels": Origin(OUTLIERS, "Outliers", "a weight channel plot"),
    "outliers:activations": Origin(OUTLIERS, "Outliers", "the activations heatmap"),
    "outliers:activation-channels": Origin(OUTLIERS, "Outliers", "the activation channel plot"),
    "outliers:sensitivity": Origin(OUTLIERS, "Outliers", "the sensitivity ranking"),
    "methods:per-layer": Origin("pages/methods.py", "Methods lab", "the per-layer chart"),
    "evaluate:grid": Origin("pages/evaluate.py", "Evaluate", "the results grid"),
    "memory:summary": Origin("pages/memory.py", "Memory sizing", "the summary table"),
}


# -- what a clicked point names -------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightTarget:
    """A weight of the sidebar's model; `row` / `column` (output / input channel) when the click named one."""

    layer: int | None  # decoder layer, None for the embeddings and the head
    module: str  # short module name: q_proj, down_proj, ...
    shape: tuple[int, int]  # (rows, columns) of the weight
    row: int | None = None
    column: int | None = None


@dataclass(frozen=True)
class SiteTarget:
    """An activation, residual, key or value tensor from the Outliers statistics (rows are tokens)."""

    layer: int
    site: str  # SiteStats.name, the grid page's activation choice
    shape: tuple[int, int]  # (sampled tokens, channels)
    row: int | None = None
    column: int | None = None


TARGET_TAGS = {"weight": WeightTarget, "site": SiteTarget}


def tensor_customdata(
    tag: str,
    layer: int | None,
    name: str,
    shape: Sequence[int],
    row: int | None = None,
    column: int | None = None,
) -> list:
    """The `customdata` of one clickable point: a `TARGET_TAGS` tag, the layer, the module or site name, the
    tensor's (rows, columns) and the row / column the point stands for (None: the whole tensor)."""
    return [tag, layer, name, int(shape[0]), int(shape[-1]), row, column]


def clicked_customdata(event) -> list[list]:
    """The customdata of every selected point of a chart event (a table's row selection is turned into
    the same shape by the caller); points without customdata are left out."""
    points = (event or {}).get("selection", {}).get("points", []) if isinstance(event, Mapping) else []
    return [list(point["customdata"]) for point in points if isinstance(point.get("customdata"), Sequence)]


def clicked_target(event) -> WeightTarget | SiteTarget | None:
    """The tensor named by the first selected point of a chart event (None: nothing clicked, or a point
    without tensor customdata, such as a line joining points)."""
    for data in clicked_customdata(event):
        if len(data) >= 7 and data[0] in TARGET_TAGS:
            tag, layer, name, rows, columns, row, column = data[:7]  # a heatmap cell adds its value
            return TARGET_TAGS[tag](
                None if layer is None else int(layer),
                str(name),
                (int(rows), int(columns)),
                _int(row),
                _int(column),
            )
    return None


def _int(value) -> int | None:
    return None if value is None else int(value)


def _place(target: WeightTarget | SiteTarget, scheme) -> dict[str, int]:
    """The grid page's row and block sliders for the target's row / column under `scheme` (none that the
    scheme cannot place, e.g. a group size that does not divide the tensor)."""
    if scheme is None or (target.row is None and target.column is None):
        return {}
    try:
        n_rows, n_blocks = block_count(target.shape, scheme)
    except ValueError:
        return {}
    rows, columns = target.shape
    place = {}
    if target.row is not None and n_rows > 1:
        place["grid_row"] = min(target.row * n_rows // rows, n_rows - 1)
    if target.column is not None and n_blocks > 1:
        place["grid_block"] = min(target.column * n_blocks // columns, n_blocks - 1)
    return place


@functools.singledispatch
def grid_params(target, scheme, weights: Sequence[WeightInfo]) -> dict[str, Any]:
    """The grid page's widget values (its session-state keys) that show `target` under `scheme`; `weights`:
    the loaded model's weights (the grid page's weight choices)."""
    raise TypeError(f"no grid view for {type(target).__name__}")


@grid_params.register
def _(target: WeightTarget, scheme, weights: Sequence[WeightInfo]) -> dict[str, Any]:
    weight = next((w for w in weights if w.layer == target.layer and w.module == target.module), None)
    if weight is None:
        raise ValueError(f"the loaded model has no {target.module} in layer {target.layer}")
    layer = HEAD_LAYER if target.layer is None else f"layer {target.layer}"
    return {"grid_source": WEIGHT_SOURCE, "grid_layer": layer, "grid_weight": weight} | _place(target, scheme)


@grid_params.register
def _(target: SiteTarget, scheme, weights: Sequence[WeightInfo]) -> dict[str, Any]:
    picks = {"grid_source": ACTIVATION_SOURCE, "grid_act_layer": target.layer, "grid_act_site": target.site}
    return picks | _place(target, scheme)


# -- charts whose points can be clicked -----------------------------------------------------------------


def selectable_cells(figure: go.Figure, cells: list[tuple[Any, Any, list]], hovertemplate: str) -> go.Figure:
    """Invisible square markers over heatmap cells (x, y, customdata), so that a click selects a cell; the
    markers take over the hover text (`hovertemplate`, which may use %{customdata[i]})."""
    figure.update_traces(hoverinfo="skip", hovertemplate=None, selector=dict(type="heatmap"))
    figure.add_scatter(
        x=[x for x, _, _ in cells],
        y=[y for _, y, _ in cells],
        customdata=[data for _, _, data in cells],
        mode="markers",
        marker=dict(symbol="square", size=22, color="rgba(0,0,0,0)"),
        selected=dict(marker=dict(opacity=0)),
        unselected=dict(marker=dict(opacity=0)),
        hovertemplate=hovertemplate,
        showlegend=False,
    )
    return figure


def weight_points(weights: Sequence[WeightInfo]) -> dict[str, list]:
    """{module path: tensor customdata} of every weight of a model (for charts keyed by module path)."""
    return {
        w.name.removesuffix(".weight"): tensor_customdata("weight", w.layer, w.module, w.shape)
        for w in weights
    }


def chart(where, figure: go.Figure, key: str, **kwargs):
    """`where.plotly_chart` with point selection: a click on a point reruns the page with its selection."""
    return where.plotly_chart(
        figure, key=key, on_select="rerun", selection_mode="points", width="stretch", **kwargs
    )


def grid_chart(where, figure: go.Figure, key: str, origin: str) -> None:
    """Draw `figure` with point selection; a click on a point with tensor customdata opens the grid page."""
    open_grid_on_click(chart(where, figure, key), origin)


def open_grid_on_click(event, origin: str) -> None:
    """Open the grid page on the clicked tensor under the sidebar's scheme; nothing when no tensor was
    clicked."""
    target = clicked_target(event)
    if target is not None:
        open_view(GRID_PAGE, grid_params(target, state.scheme(), cache.weight_list()), origin)


def open_compare_on_click(event, origin: str, offered: Callable[[], Sequence[str]]) -> None:
    """Open Compare with the clicked variant beside the reference; `offered()`: the Compare page's variant
    keys (a variant it does not offer is said, not opened)."""
    variant = next((data[1] for data in clicked_customdata(event) if data and data[0] == VARIANT_TAG), None)
    if variant is None:
        return
    if variant not in offered():
        st.info(
            f"**{variant}** is not among the Compare page's variants, so it cannot be opened there.",
            icon=":material/compare:",
        )
        return
    open_view(COMPARE_PAGE, {"compare_variants": [variant]}, origin)


SPEED_VARIANTS = {  # a Memory sizing format -> the Speed page's variant and kernel that run that format
    **{"fp32": "fp32", "bf16": "bf16", "int8": "W8A16", "llm.int8": "LLM.int8 (bnb)"},
    **{"int4-g128": "W4A16", "gptq-int4-g128": "W4A16", "awq-int4-g128": "W4A16"},
    **{"nf4": "NF4 (bnb)", "nf4-dq": "NF4 (bnb)"},
}


def speed_params(preset: str, device: str) -> dict[str, list[str]]:
    """The Speed page's decode variant and microbenchmark format for Memory sizing's format `preset` on
    `device` (empty: the Speed page measures no such format there)."""
    from engine.speed.variants import available_formats, available_variants

    variant = SPEED_VARIANTS.get(preset)
    params = {}
    if variant in available_variants(device):
        params["speed_variants"] = [variant]
    if variant in available_formats(device):
        params["speed_formats"] = [variant]
    return params


def open_speed_for(preset: str, label: str, origin: str) -> None:
    """Open the Speed page with the variant that runs Memory sizing's format `preset` picked, for its
    measured decode speed beside the bandwidth roofline; says so when no variant runs it here."""
    params = speed_params(preset, state.selection()[1])
    if not params:
        st.info(
            f"The Speed page has no kernel for **{label}** on this device, so there is no measured speed to "
            "open for it.",
            icon=":material/speed:",
        )
        return
    open_view(SPEED_PAGE, params, origin)


# -- going to a page and coming back ---------------------------------------------------------------------


@functools.singledispatch
def url_text(value) -> str:
    """A widget value as URL text, the way ui/link_params.py reads it back."""
    return str(value)


@url_text.register
def _(value: WeightInfo) -> str:
    return value.name


@url_text.register(list)
@url_text.register(tuple)
def _(value) -> str:
    return ",".join(url_text(item) for item in value)


@url_text.register(QuantScheme)
def _(value) -> str:
    return value.label


@url_text.register(GGUFType)
def _(value) -> str:
    return value.name


def open_view(page: str, params: Mapping[str, Any], origin: str, session_only: Collection[str] = ()) -> None:
    """Switch to `page` with its widgets set to `params` (widget key -> value), noting `origin` (an ORIGINS
    id) for the "Opened from" note and keeping the origin page's URL (its selections) for the way back.

    The values go in the URL, which ui/links.py restores and keeps (so the page's link is right at once),
    and in the session, set by `origin_note` as they are (a URL's text may not say an option's type);
    `session_only`: keys that links do not take."""
    st.session_state[BACK] = {"id": origin, "query": {key: st.query_params[key] for key in st.query_params}}
    st.session_state[PENDING] = {"page": page, "values": dict(params)}
    query = {key: url_text(value) for key, value in params.items() if key not in session_only}
    if page == GRID_PAGE and state.scheme() is not None:
        query["scheme"] = url_text(state.scheme())  # the view is "this tensor under this scheme"
    st.switch_page(page, query_params={**query, "from": origin})


def arrive(page: str) -> dict[str, Any]:
    """Set the widget values a click-through left for `page` (before its widgets are drawn); returns them."""
    pending = st.session_state.get(PENDING)
    if not pending or pending.get("page") != page:
        return {}
    del st.session_state[PENDING]
    for key, value in pending["values"].items():
        st.session_state[key] = value
    return pending["values"]


def origin_note(page: str) -> str | None:
    """On a click-through's target page, right after `ui.page.start`: set the values the click left, then,
    when the URL says where the page was opened from, say so with a button back there (to the origin's
    URL as it was, so its selections come back). Returns the origin id shown, else None."""
    arrive(page)
    origin_id = st.query_params.get("from")
    origin = ORIGINS.get(origin_id)
    if origin is None:
        return None
    note, back = st.columns([2.5, 1], vertical_alignment="center")
    note.info(f"Opened from {origin.page_title}: {origin.view}.", icon=":material/call_made:")
    if back.button(f"Back to {origin.page_title}", key="qe_clickthrough_back", icon=":material/arrow_back:"):
        record = st.session_state.get(BACK) or {}
        query = record.get("query", {}) if record.get("id") == origin_id else {}
        st.switch_page(
            origin.page, query_params={key: value for key, value in query.items() if key != "from"}
        )
    return origin_id
