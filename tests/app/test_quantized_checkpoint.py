"""A GPTQ checkpoint picked in the sidebar: it loads, every page says what it is and keeps working."""

from __future__ import annotations

import importlib.util

import pytest

from tests.app.conftest import PAGES, no_exceptions, open_page

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gptqmodel") is None or importlib.util.find_spec("optimum") is None,
    reason="gptqmodel / optimum are not installed",
)


@pytest.fixture(scope="module")
def gptq_folder(tmp_path_factory):
    from engine.methods import RTNConfig, quantize_model
    from engine.models.export import export_model
    from engine.quant.schemes import QuantScheme
    from tests.conftest import build_char_tokenizer, build_tiny_llama

    folder = tmp_path_factory.mktemp("tiny-gptq")
    quantized = quantize_model(build_tiny_llama(), RTNConfig(QuantScheme(4, "int", False, "group", 32)))
    export_model(quantized.model, folder, "gptq", tokenizer=build_char_tokenizer())
    return folder


def test_every_page_works_with_a_gptq_checkpoint(app, gptq_folder):
    open_page(app, "overview")
    app.radio(key="qe_pick_kind").set_value("folder")
    app.text_input(key="qe_pick_location").set_value(str(gptq_folder))
    app.button(key="qe_load_model").click().run()
    no_exceptions(app)
    assert not app.sidebar.error
    assert any("already quantized: **GPTQ int4 g32 asym" in info.value for info in app.info)
    for page in PAGES:
        app.switch_page(f"pages/{page}.py")
        app.run()
        no_exceptions(app)
        if page != "learn":  # the lessons use their own tensors, not the loaded model
            assert any("already quantized" in info.value for info in app.info), page
