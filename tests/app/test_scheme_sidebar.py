"""The sidebar's scheme (issue 22): group sizes that fit the loaded model, the picker only on the pages that
use it and the same scheme after pages without it, plain-language refusals, a glossary on every page."""

from __future__ import annotations

import re

from torch import nn

from engine.models.loading import available_devices, default_dtype
from engine.models.sources import ModelSource
from engine.quant.shapes import CANDIDATE_GROUP_SIZES
from tests.app.conftest import PAGES, no_exceptions, open_page
from ui import glossary

SCHEME_PAGES = {"grid", "compare", "memory", "outliers"}  # the pages that read state.scheme()
IDENTIFIER = re.compile(r"\b[a-z]+_[a-z_]+\b|=")  # double_quant, group_size, bits=4 ...


def _default_model():
    from ui import cache

    device = available_devices()[-1]
    return cache.models().get((ModelSource(), device, default_dtype(device))).model


def _linear_widths(model) -> set[int]:
    return {
        module.in_features
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and not name.endswith("lm_head")
    }


def _has_scheme(app) -> bool:
    return any(box.key == "qe_scheme_format" for box in app.sidebar.selectbox)


def _used_for(app) -> list[str]:
    return [
        caption.value for caption in app.sidebar.caption if caption.value.startswith("Used on this page for")
    ]


def _has_glossary(app) -> bool:
    return any(expander.label == "Glossary" for expander in app.sidebar.expander)


def test_picker_offers_exactly_the_group_sizes_that_fit_the_model(app):
    open_page(app, "grid")
    widths = _linear_widths(_default_model())
    assert widths == {576, 1536}  # SmolLM2-135M: hidden size and MLP width
    fitting = [size for size in CANDIDATE_GROUP_SIZES if all(width % size == 0 for width in widths)]
    offered = [int(option) for option in app.select_slider(key="qe_scheme_group").options]
    assert offered == fitting
    assert {16, 32, 64, 96, 192} <= set(offered) and not {128, 256} & set(offered)
    assert any(
        "128 and 256 are left out: they do not divide 576" in caption.value for caption in app.sidebar.caption
    )

    # a tensor of the grid page whose rows take fewer sizes: its suggestions are sizes the picker offers
    app.segmented_control(key="grid_source").set_value("Synthetic").run()  # 512 columns
    app.select_slider(key="qe_scheme_group").set_value(96).run()
    no_exceptions(app)
    message = next(error.value for error in app.error if "does not divide" in error.value)
    suggested = [
        int(n) for n in re.search(r"that do: ([\d, or]+);", message).group(1).replace(" or", ",").split(",")
    ]
    assert suggested == [size for size in offered if 512 % size == 0] == [16, 32, 64]


def test_scheme_only_where_used_and_kept_through_pages_without_it(app):
    open_page(app, "grid")
    app.select_slider(key="qe_scheme_bits").set_value(3).run()
    app.radio(key="qe_scheme_range").set_value("asymmetric (int zero)").run()
    app.select_slider(key="qe_scheme_group").set_value(32).run()
    app.slider(key="qe_scheme_clip").set_value(0.9).run()
    no_exceptions(app)
    picked = "int3 asym g32 clip0.9"
    assert any(picked in markdown.value for markdown in app.markdown)  # the grid shows the picked scheme
    for name in [page for page in PAGES if page != "grid"] + ["grid"]:
        app.switch_page(f"pages/{name}.py").run()
        no_exceptions(app)
        assert _has_glossary(app), name
        assert any("[data-tag]" in html.proto.body for html in app.html), name  # multiselect chips in full
        assert _has_scheme(app) == (name in SCHEME_PAGES), name
        assert len(_used_for(app)) == (name in SCHEME_PAGES), name
        if name in SCHEME_PAGES:  # the same scheme, after pages that did not draw it
            assert app.select_slider(key="qe_scheme_bits").value == 3, name
            assert app.select_slider(key="qe_scheme_group").value == 32, name
            assert app.slider(key="qe_scheme_clip").value == 0.9, name
    assert any(picked in markdown.value for markdown in app.markdown)
    assert "the tensor shown" in _used_for(app)[0]


def test_a_size_picked_before_the_model_loaded_moves_to_one_that_fits(app):
    from ui import cache

    app.run()
    cache.models().clear()  # as on a first visit straight to the grid: the sidebar runs before the model loads
    app.switch_page("pages/grid.py").run()
    assert "128" in app.select_slider(key="qe_scheme_group").options
    assert any("every usual size is offered" in caption.value for caption in app.sidebar.caption)
    app.select_slider(key="qe_scheme_group").set_value(128).run()  # the page has loaded the model since
    no_exceptions(app)
    assert "128" not in app.select_slider(key="qe_scheme_group").options
    assert app.select_slider(key="qe_scheme_group").value == 96  # the nearest size that fits
    assert any("128 does not fit this model" in caption.value for caption in app.sidebar.caption)


def test_an_impossible_scheme_is_said_in_words(app):
    open_page(app, "memory")
    app.radio(key="qe_scheme_granularity").set_value("tensor").run()
    app.checkbox(key="qe_scheme_dq").check().run()
    no_exceptions(app)
    message = next(error.value for error in app.sidebar.error if "Impossible scheme" in error.value)
    assert "double quantization" in message.lower() and "per-tensor" in message
    assert not IDENTIFIER.search(message), message


def test_the_glossary_searches_its_terms(app):
    required = [
        "W4A16", "W8A8", "W4A4", "KIVI", "Bits per weight", "Group size", "Symmetric", "Asymmetric",
        "Q4_1", "Integer zero point", "Absmax", "SQNR", "Perplexity", "KL divergence", "Nats", "Top-1",
        "Teacher-forced", "RTN", "GPTQ", "AWQ", "SmoothQuant", "LLM.int8()", "NF4", "e4m3", "e5m2",
        "bnb FP4", "massive activation", "GEMV", "Roofline", "Tokens per second",
    ]  # fmt: skip
    assert all(any(word.lower() in term.lower() for term in glossary.TERMS) for word in required)
    open_page(app, "evaluate")
    app.text_input(key="qe_glossary_search").set_value("nats").run()
    no_exceptions(app)
    shown = next(md.value for md in app.sidebar.markdown if md.value.startswith("**"))
    assert "**Nats**" in shown and "**KL divergence**" in shown and "**GPTQ**" not in shown


def test_named_formats_and_gguf_types_reach_every_page_that_uses_the_scheme(app):
    """Starting from MXFP4 / NVFP4 gives that exact scheme; a GGUF type reaches the pages as the type itself.
    Picked on the Memory page (it prices the scheme without quantizing anything); the grid page once."""
    from engine.quant.gguf import Q4_K
    from ui import state

    open_page(app, "memory")
    app.selectbox(key="qe_scheme_start").set_value("nvfp4").run()
    no_exceptions(app)
    assert not any(
        box.key == "qe_scheme_format" for box in app.sidebar.selectbox
    )  # the fields are the preset's
    assert app.session_state[state.SCHEME].label == "nvfp4"
    assert any("4.5 bits per weight plus 32 per tensor" in c.value for c in app.sidebar.caption)
    app.selectbox(key="qe_scheme_start").set_value("mxfp4").run()
    app.checkbox(key="qe_scheme_rceil").check().run()
    assert app.session_state[state.SCHEME].label == "mxfp4 rceil"

    app.selectbox(key="qe_scheme_start").set_value("Q4_K").run()
    no_exceptions(app)
    assert app.session_state[state.SCHEME] is Q4_K
    assert any("not a multiple of 256" in c.value for c in app.sidebar.caption)  # 576-wide rows fall back
    app.switch_page("pages/compare.py").run()
    no_exceptions(app)
    assert app.session_state[state.SCHEME] is Q4_K  # kept through the page change
    app.switch_page("pages/memory.py").run()
    no_exceptions(app)
    app.selectbox(key="qe_scheme_start").set_value("build").run()  # back to the fields, as they were
    assert app.session_state[state.SCHEME].label == "int4 g64"

    app.selectbox(key="qe_scheme_start").set_value("fp8_e4m3 block128").run()  # DeepSeek-V3's FP8 tiles
    no_exceptions(app)
    assert app.session_state[state.SCHEME].label == "fp8_e4m3 block128"
    app.selectbox(key="qe_scheme_start").set_value("build").run()
    app.selectbox(key="qe_scheme_format").set_value("fp8_e4m3").run()
    app.radio(key="qe_scheme_granularity").set_value("block").run()  # the same scheme from the fields
    no_exceptions(app)
    assert app.session_state[state.SCHEME].label == "fp8_e4m3 block128"
    app.switch_page("pages/grid.py").run()
    no_exceptions(app)
    assert any(slider.label == "Row of tiles" for slider in app.slider)  # the grid page picks a tile
