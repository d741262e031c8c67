"""The Outliers page's "Rotation" tab under AppTest, on its own (the rest of the page is not needed).

On the default model: Rotate shows that the rotated copy computes the same function and that its outliers
shrink; the comparison, with one setting (W4A4) on 1 window of 128 tokens, shows rotation beating plain
rounding. A LayerNorm model (a tiny GPT-2) gets the engine's reason and the tab stays up.
"""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from tests.app.conftest import TIMEOUT, no_exceptions


def _rotation_tab_alone(folder: str | None) -> None:
    import streamlit as st

    from engine.models.sources import ModelSource
    from ui import cache, state
    from ui.pages import outliers_rotation

    state.init()
    if folder is not None:
        st.session_state[state.MODEL_SOURCE] = ModelSource("folder", folder)
    outliers_rotation.rotation_tab(cache.current_model_or_stop())


def _click(app: AppTest, key: str) -> None:
    app.button(key=key).click().run()
    no_exceptions(app)


@pytest.fixture(scope="module")
def rotated() -> AppTest:
    app = AppTest.from_function(_rotation_tab_alone, args=(None,), default_timeout=2 * TIMEOUT).run()
    no_exceptions(app)
    assert any("Press **Rotate**" in info.value for info in app.info)
    _click(app, "outliers_rotation_run")
    return app


@pytest.mark.slow
def test_rotate_shows_the_same_function_and_the_outliers_shrinking(rotated):
    app = rotated
    metrics = {metric.label: metric.value for metric in app.metric}
    assert "10" in metrics["Same function: logits within"]  # e.g. "2×10⁻⁶"
    run = next(iter(app.session_state["outliers_rotation_session"].runs.values()))
    assert run.logit_change < 1e-4  # measured ~1e-6 in float32
    assert run.stats.before.layers[12].top_channel == 507
    assert run.stats.ratio_drop > 4  # measured 23.8 -> 4.4 on these 2 x 128 tokens
    assert "→" in metrics["Largest max / RMS"]
    charts = app.get("plotly_chart")
    assert len(charts) == 2  # max / RMS and kurtosis, before vs after
    app.run()  # a rerun redraws from the session, no new button press needed
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == 2 and not any("Press **Rotate**" in i.value for i in app.info)


@pytest.mark.slow
def test_rotation_beats_plain_rounding_at_w4a4(rotated):
    app = rotated
    app.multiselect(key="outliers_rotation_settings").set_value(["W4A4"])
    app.select_slider(key="outliers_rotation_windows").set_value(1)
    app.select_slider(key="outliers_rotation_tokens").set_value(128)
    app.run()
    _click(app, "outliers_rotation_compare")
    frame = next(f.value for f in app.dataframe if "mean KL (nats)" in f.value.columns)
    ppl = dict(zip(frame["method"], frame["perplexity"], strict=True))
    assert set(ppl) == {"plain rounding (RTN)", "SmoothQuant", "rotation + RTN"}
    # measured on these 128 tokens: plain 9,016, SmoothQuant 5,517, rotation + RTN 257
    assert ppl["rotation + RTN"] * 8 < ppl["plain rounding (RTN)"]
    assert len(app.get("plotly_chart")) == 3
    app.run()  # rows are kept
    no_exceptions(app)
    assert any("mean KL (nats)" in f.value.columns for f in app.dataframe)


def test_a_layernorm_model_gets_the_reason(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import build_char_tokenizer

    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=2, n_positions=128, bos_token_id=1, eos_token_id=2)  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    build_char_tokenizer().save_pretrained(tmp_path)
    app = AppTest.from_function(_rotation_tab_alone, args=(str(tmp_path),), default_timeout=TIMEOUT).run()
    no_exceptions(app)
    assert any("uses LayerNorm with a bias" in error.value for error in app.error)
    assert not any(button.key == "outliers_rotation_run" for button in app.button)
