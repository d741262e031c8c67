"""The Outliers page's "Massive activations" and "Super weights" tabs under AppTest.

On the default model with the smallest collection the page offers (1 window of 64 tokens), so the scans and
the experiments (on 1 held-out window of 64 tokens) stay quick; one AppTest is driven through every step.
A tiny random model has no massive activations: both tabs say so instead of failing; a model whose MLP has no
down_proj (a tiny OPT: its fc2 sits in the decoder layer) gets the engine's reason.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import ROOT, TIMEOUT, no_exceptions, open_page

pytestmark = pytest.mark.slow


def _press_collect(app: AppTest) -> AppTest:
    """Press Collect statistics and wait for the background collection (ui.jobs) before a rerun."""
    app.button(key="outliers_collect").click().run()
    no_exceptions(app)
    if "outliers_collect_job" in app.session_state:  # none starts when the statistics are cached
        assert app.session_state["outliers_collect_job"].wait(TIMEOUT), "the collection did not finish"
    return app.run()


def _collect(app: AppTest) -> AppTest:
    open_page(app, "outliers")
    app.number_input(key="outliers_windows").set_value(1)
    app.select_slider(key="outliers_window").set_value(64)
    _press_collect(app)
    no_exceptions(app)
    return app


def _frame(app: AppTest, column: str):
    return next(frame.value for frame in app.dataframe if column in frame.value.columns)


def _click(app: AppTest, key: str) -> None:
    app.button(key=key).click().run()
    no_exceptions(app)


@pytest.fixture(scope="module")
def collected() -> AppTest:
    return _collect(AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT))


def test_massive_activations_name_channel_507_on_the_first_token(collected):
    app = collected
    assert any("Find massive activations" in info.value for info in app.info)
    _click(app, "outliers_massive_find")
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Massive channel"] == "#507"
    assert int(metrics["First massive at layer"]) < 15  # measured: 11
    carriers = _frame(app, "its channel's layers")
    assert carriers["channels"].iloc[0].startswith("#507")
    assert carriers["position"].iloc[0] == 0 and carriers["largest |x|"].iloc[0] > 10_000
    assert any("of their attention on the first token" in caption.value for caption in app.caption)
    app.run()
    assert not any(button.key == "outliers_massive_find" for button in app.button)  # kept for the next runs
    assert {metric.label: metric.value for metric in app.metric}["Massive channel"] == "#507"


def test_super_weights_zeroed_and_kept(collected):
    app = collected
    _click(app, "outliers_super_find")
    candidates = _frame(app, "rank in tensor")
    top = candidates.iloc[0]
    assert top["top"] == "★" and top["layer"] == 11 and top["tensor"] == "mlp.down_proj"
    assert top["(row, column)"] in ("(507, 1229)", "(507, 1487)")
    assert set(candidates[candidates["top"] == "★"]["(row, column)"]) == {"(507, 1229)", "(507, 1487)"}
    assert any("channel #507's spike" in caption.value for caption in app.caption)
    assert len(app.multiselect(key="outliers_super_pick").value) == 2

    _click(app, "outliers_super_ablate")
    ablation = _frame(app, "weights zeroed")
    assert len(ablation) == 4  # unchanged, super weights, random weights, largest others
    reference, zeroed = ablation["perplexity"].iloc[0], ablation["perplexity"].iloc[1]
    assert "super weights" in ablation["variant"].iloc[1] and zeroed > 10 * reference
    assert ablation["perplexity"].iloc[2] < 2 * reference  # random weights of the same size: harmless
    assert len(app.code) >= 4  # the generations, side by side

    _click(app, "outliers_super_protect")  # default: int4, one scale per tensor, on layer 11's down_proj
    protection = _frame(app, "weights kept in 16-bit")
    plain, kept = protection["mean KL"].iloc[1], protection["mean KL"].iloc[2]
    assert protection["weights kept in 16-bit"].iloc[2] == 2 and kept < 0.8 * plain  # measured 0.20 -> 0.10
    assert len(_frame(app, "weights zeroed")) == 4  # the ablation's table stays


def test_a_model_without_massive_activations_says_so(tiny_model_dir):
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    open_page(app, "outliers")
    app.radio(key="qe_pick_kind").set_value("folder")
    app.text_input(key="qe_pick_location").set_value(str(tiny_model_dir))
    app.button(key="qe_load_model").click().run()
    no_exceptions(app)
    app.number_input(key="outliers_windows").set_value(1)
    app.select_slider(key="outliers_window").set_value(64)
    _press_collect(app)
    no_exceptions(app)
    _click(app, "outliers_massive_find")
    _click(app, "outliers_super_find")
    assert any("No massive activations" in info.value for info in app.info)
    assert any("No super weights here" in info.value for info in app.info)
    assert not app.error


def _super_tab_alone(folder: str) -> None:
    """The Super weights tab on its own (the rest of the page is not needed), for the model in `folder`."""
    import streamlit as st

    from engine.models.sources import ModelSource
    from ui import state
    from ui.cache.outliers import StatsKey
    from ui.pages import outliers_super

    state.init()
    st.session_state[state.MODEL_SOURCE] = ModelSource("folder", folder)
    outliers_super.super_tab(StatsKey(*state.selection(), "britannica", 1, 64), None)


def test_a_model_without_down_proj_gets_the_reason(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    from tests.conftest import build_char_tokenizer

    config = OPTConfig(
        vocab_size=96,
        hidden_size=32,
        ffn_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=128,
        word_embed_proj_dim=32,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    OPTForCausalLM(config).save_pretrained(tmp_path)
    build_char_tokenizer().save_pretrained(tmp_path)
    app = AppTest.from_function(_super_tab_alone, args=(str(tmp_path),), default_timeout=TIMEOUT).run()
    _click(app, "outliers_super_find")
    assert any("no MLP output projection" in error.value for error in app.error)
