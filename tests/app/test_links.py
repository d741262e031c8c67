"""Links that reopen a view (issue 21): every page's selections go into the URL and come back in a fresh
session; invalid, unknown and hostile parameters are ignored with a message naming them, and a link never
loads a model."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from engine.models.sources import ModelSource
from engine.quant.gguf import GGUF_TYPES
from engine.quant.schemes import parse_label
from tests.app.conftest import ROOT, TIMEOUT, no_exceptions, open_page
from ui import link_params
from ui.link_params import (
    NO_DEFAULT,
    Choice,
    Choices,
    Flag,
    FloatRange,
    IntRange,
    ModelFolder,
    SchemeLabel,
    Text,
)
from ui.widgets import picker_values

# page file -> (title, {widget key: a value away from the page's default})
ROUND_TRIPS = {
    "overview": ("Overview", {}),
    "grid": ("Quantization grid", {"grid_layer": "layer 3", "grid_row": 5}),
    "outliers": ("Outliers", {"outliers_windows": 4, "outliers_window": 128, "outliers_corpus": "pydoc"}),
    "methods": ("Methods lab", {"methods_bits": 8, "methods_calib_windows": 4}),
    "planner": ("Plan a recipe", {"planner_windows": 2, "planner_scope": "last 4 (quick look)"}),
    "compare": ("Compare generations", {"compare_max_new_tokens": 20, "compare_chat": False}),
    "evaluate": ("Evaluate", {"evaluate_windows": 2, "evaluate_window": 128}),
    "memory": (
        "Memory sizing",
        {"memory_context": 32768, "memory_engine": "vllm", "memory_batch": 8, "memory_tab": "Fits on"},
    ),
    "speed": ("Speed", {"speed_repeats": 5, "speed_batches": [1, 4]}),
    "learn": ("Learn", {"learn_tab": "Granularity"}),  # a tab only: the experiments take long
}


def open_link(page: str, params: dict[str, str]) -> AppTest:
    """A fresh session opening `page` from a link with these query parameters."""
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    app.run()
    app.switch_page(f"pages/{page}.py")
    app.query_params.update(params)
    app.run()
    no_exceptions(app)
    return app


def ignored_warning(app: AppTest) -> str:
    found = [w.value for w in app.warning if w.value.startswith("Ignored from the link")]
    assert len(found) == 1, [w.value for w in app.warning]
    return found[0]


@pytest.mark.parametrize("page", list(ROUND_TRIPS))
def test_round_trip(app, page):
    title, values = ROUND_TRIPS[page]
    open_page(app, page)
    for param in link_params.PAGE_PARAMS[title]:  # the declared defaults are the page's own
        if param.default is not NO_DEFAULT and param.key in app.session_state:
            assert param.kind.encode(app.session_state[param.key]) == param.kind.encode(param.default), (
                param.key
            )
    assert not app.query_params  # defaults are not written
    assert any(code.value.startswith(link_params.PAGE_PATHS[title]) for code in app.code)  # the link control
    for key, value in values.items():
        app.session_state[key] = value
    app.run()
    no_exceptions(app)
    written = dict(app.query_params)
    assert set(values) <= set(written), written
    fresh = open_link(page, written)
    for key, value in values.items():
        assert fresh.session_state[key] == value, key
    assert not [w for w in fresh.warning if w.value.startswith("Ignored")]


def test_grid_weight_round_trip(app):
    """An object option (the weight) goes by its parameter name."""
    open_page(app, "grid")
    app.selectbox(key="grid_layer").select("layer 11").run()
    weight = app.selectbox(key="grid_weight")
    weight.set_value(next(o for o in weight.options if o.startswith("down_proj"))).run()
    no_exceptions(app)
    assert app.query_params["grid_weight"] == "model.layers.11.mlp.down_proj.weight"
    fresh = open_link("grid", dict(app.query_params))
    assert fresh.session_state["grid_weight"].name == "model.layers.11.mlp.down_proj.weight"


def test_scheme_round_trip(app):
    """The sidebar scheme goes by its label, on a page that uses it (Memory sizing: a cheap page to rerun)."""
    open_page(app, "memory")
    app.select_slider(key="qe_scheme_bits").set_value(8).run()
    no_exceptions(app)
    assert app.query_params["scheme"] == "int8 g64"
    fresh = open_link("memory", dict(app.query_params))
    assert fresh.session_state["qe_scheme_bits"] == 8
    assert not [w for w in fresh.warning if w.value.startswith("Ignored")]


def test_user_change_is_not_overwritten_by_the_older_url(app):
    fresh = open_link("memory", {"memory_context": "32768"})
    fresh.session_state["memory_context"] = 4096
    fresh.run()
    assert fresh.session_state["memory_context"] == 4096
    assert fresh.query_params["memory_context"] == "4096"
    fresh.session_state["memory_context"] = 16384
    fresh.run()
    fresh.query_params["memory_context"] = "4096"  # a rerun whose URL is a change behind (quick clicks)
    fresh.run()
    assert fresh.session_state["memory_context"] == 16384
    assert fresh.query_params["memory_context"] == "16384"


def test_invalid_and_unknown_parameters_are_named_and_ignored():
    app = open_link(
        "memory",
        {"memory_context": "abc", "memory_engine": "vllm", "nonsense": "1", "memory_gpu": "Voodoo 3"},
    )
    warning = ignored_warning(app)
    assert "memory_context='abc' (not one of the choices" in warning
    assert "nonsense (not a setting of this page)" in warning
    assert "memory_gpu='Voodoo 3'" in warning
    assert app.session_state["memory_context"] == 8192  # default kept
    assert app.session_state["memory_engine"] == "vllm"  # the valid one applied
    assert "nonsense" not in app.query_params  # the URL now says what the page shows


def test_hostile_parameters_are_refused_and_nothing_is_loaded(monkeypatch, tmp_path):
    monkeypatch.setenv("QE_MODEL_ROOTS", str(tmp_path))
    app = open_link(
        "memory",
        {
            "memory_engine": "x" * 10_000,
            "memory_batch": "-5",
            "memory_context": "1e99",
            "scheme": "int4 g64 nonsense",
            "model": "../../etc/passwd",
        },
    )
    warning = ignored_warning(app)
    assert "memory_engine (longer than 200 characters)" in warning
    assert "memory_batch='-5' (must be from 1 to 4,096)" in warning
    assert "memory_context='1e99'" in warning
    assert "scheme='int4 g64 nonsense' (not a scheme" in warning
    assert "model='../../etc/passwd'" in warning
    assert app.session_state["memory_batch"] == 1
    assert app.session_state["qe_model_source"] == ModelSource()  # still the default model
    for outside in ("/etc", str(tmp_path.parent)):
        app = open_link("memory", {"model": outside})
        assert f"model='{outside}' (outside the folders" in ignored_warning(app)
        assert app.session_state["qe_model_source"] == ModelSource()


def test_model_link_fills_the_sidebar_without_loading(monkeypatch, tmp_path):
    monkeypatch.setenv("QE_MODEL_ROOTS", str(tmp_path))
    folder = tmp_path / "my-model"
    app = open_link("overview", {"model": str(folder)})
    assert app.radio(key="qe_pick_kind").value == "folder"
    assert app.text_input(key="qe_pick_location").value == str(folder)
    assert any("press **Load model**" in info.value for info in app.info)
    assert app.session_state["qe_model_source"] == ModelSource()  # nothing loaded
    monkeypatch.delenv("QE_MODEL_ROOTS")
    app = open_link("overview", {"model": str(folder)})
    assert "QE_MODEL_ROOTS is not set" in ignored_warning(app)


def test_parameter_types():
    choice = Choice((64, 128), to_text=str)
    assert choice.parse("128") == 128 and choice.encode(64) == "64"
    with pytest.raises(ValueError, match="not one of the choices: 64, 128"):
        choice.parse("1e99")
    several = Choices(("a", "b", "c"))
    assert several.parse("c,a,c") == ["c", "a"] and several.encode(["a", "b"]) == "a,b"
    with pytest.raises(ValueError):
        several.parse("a,z")
    numbers = IntRange(1, 4096)
    assert numbers.parse("8") == 8
    for bad, reason in (("-5", "from 1 to 4,096"), ("abc", "whole number"), ("1" * 40, "whole number")):
        with pytest.raises(ValueError, match=reason):
            numbers.parse(bad)
    floats = FloatRange(0.0, 2.0)
    assert floats.parse("0.7") == 0.7 and floats.encode(0.5) == "0.5"
    for bad in ("nan", "inf", "3", "x"):
        with pytest.raises(ValueError):
            floats.parse(bad)
    assert Flag().parse("0") is False and Flag().parse("true") is True and Flag().encode(True) == "1"
    with pytest.raises(ValueError):
        Flag().parse("yes please")
    assert Text(10, r"[a-z_]+").parse("down_proj") == "down_proj"
    for bad in ("x" * 11, "a;b"):
        with pytest.raises(ValueError):
            Text(10, r"[a-z_]+").parse(bad)
    scheme = SchemeLabel()
    assert scheme.parse("int4 asym g128") == parse_label("int4 asym g128")
    assert scheme.parse("Q4_K") is GGUF_TYPES["Q4_K"] and scheme.encode(GGUF_TYPES["Q4_K"]) == "Q4_K"
    assert scheme.encode(parse_label("nvfp4")) == "nvfp4"
    with pytest.raises(ValueError, match="not a scheme"):
        scheme.parse("int4 g64 nonsense")


def test_model_folder_type(monkeypatch, tmp_path):
    folder = ModelFolder()
    monkeypatch.delenv("QE_MODEL_ROOTS", raising=False)
    assert folder.parse("default") == ModelSource()
    with pytest.raises(ValueError, match="QE_MODEL_ROOTS"):
        folder.parse(str(tmp_path))
    monkeypatch.setenv("QE_MODEL_ROOTS", str(tmp_path))
    assert folder.parse(str(tmp_path / "m")) == ModelSource("folder", str(tmp_path / "m"))
    assert folder.parse("m") == ModelSource("folder", str(tmp_path / "m"))  # relative to the first root
    assert folder.parse("m/x.Q4_K.gguf").kind == "gguf"
    (tmp_path / "escape").symlink_to("/etc")
    for bad in ("../../etc/passwd", "m/../../x", "/etc", "/", "escape", "m\x00x", " "):
        with pytest.raises(ValueError):
            folder.parse(bad)


@pytest.mark.parametrize("label", ["int4 g64", "int3 asym g128 clip0.9", "nf4 g64 dq", "mxfp4 rceil", "Q4_K"])
def test_picker_values_rebuild_the_scheme(label):
    scheme = GGUF_TYPES.get(label) or parse_label(label)
    values = picker_values(scheme, "qe_scheme")
    assert values["qe_scheme_start"] in ("build", label, label.removesuffix(" rceil"))
    with pytest.raises(ValueError):
        picker_values(parse_label("int4 g100"), "qe_scheme")


def test_parameters_of_other_modules_are_passed_on():
    """present / tour / from belong to ui.presenter and the click-throughs: kept in the URL, not judged here."""
    app = open_link("memory", {"from": "somewhere", "memory_engine": "vllm"})
    assert app.query_params["from"] == "somewhere"
    assert not [w for w in app.warning if "from=" in w.value]
