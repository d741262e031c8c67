"""The Memory page under AppTest: catalog models, formats, uploads and the loaded model's measured bytes."""

from __future__ import annotations

import pytest

from tests.app.conftest import no_exceptions, open_page


def _metric(app, label):
    return next(metric.value for metric in app.metric if metric.label == label)


def _table(app, index=0):
    return app.dataframe[index].value


def test_default_is_llama_31_8b_with_the_published_kv_figure(app):
    open_page(app, "memory")
    assert _metric(app, "Parameters") == "8.030 B"
    assert _metric(app, "KV per token") == "128.0 KiB"
    table = _table(app)
    assert list(table["weights"])[:3] == [
        "bf16 / fp16",
        "int8 per-channel (W8, SmoothQuant)",
        "int4 g128, fp16 scales",
    ]
    assert table["total GiB"][:3].is_monotonic_decreasing  # nf4 (4.5 bpw) sits above int4 g128 (4.125)
    assert len(app.get("plotly_chart")) >= 2


def test_changing_context_batch_and_kv_changes_the_kv_cache(app):
    open_page(app, "memory")
    before = _metric(app, "KV cache")
    app.select_slider(key="memory_context").set_value(131072).run()
    no_exceptions(app)
    assert _metric(app, "KV cache") == "16.00 GiB"
    app.number_input(key="memory_batch").set_value(4).run()
    app.selectbox(key="memory_kv").set_value("int4").run()
    no_exceptions(app)
    assert _metric(app, "KV cache") == "18.00 GiB"  # 4 x 16 GiB x 4.5/16
    assert before != _metric(app, "KV cache")


def test_moe_and_mla_catalog_models(app):
    open_page(app, "memory")
    from engine.sizing.catalog import catalog_models

    deepseek = next(model for model in catalog_models() if model.name.startswith("DeepSeek-V3"))
    app.selectbox(key="memory_catalog").set_value(deepseek).run()
    no_exceptions(app)
    assert "B" in _metric(app, "Active per token")
    assert any("MLA" in caption.value for caption in app.caption)


def test_uploading_a_hostile_config_is_a_clear_error(app):
    open_page(app, "memory")
    app.segmented_control(key="memory_source").set_value("Upload config.json").run()
    no_exceptions(app)
    assert any("Upload a model's config.json" in info.value for info in app.info)


def test_loaded_model_estimate_within_one_percent_of_real_bytes(app):
    open_page(app, "memory")
    app.segmented_control(key="memory_source").set_value("Loaded model").run()
    no_exceptions(app)
    assert _metric(app, "Parameters") == "0.135 B"
    difference = float(_metric(app, "Difference").rstrip("%"))
    assert abs(difference) < 1.0


def test_gguf_and_sidebar_scheme_formats(app):
    open_page(app, "memory")
    app.multiselect(key="memory_formats").set_value(["bf16", "Q4_K_M", "Q8_0"]).run()
    app.checkbox(key="memory_add_sidebar").check().run()
    no_exceptions(app)
    labels = list(_table(app)["weights"])
    assert labels == ["bf16 / fp16", "GGUF Q4_K_M", "GGUF Q8_0", "int4 g64 (your scheme)"]
    bits = list(_table(app)["bits/weight"])
    assert bits[1] == 4.894  # Llama-3.1-8B's tensors at llama.cpp's Q4_K_M types (was a 4.89 constant)


def test_values_in_their_own_kv_format(app):
    """K fp8 and V int4 at 131,072 tokens: keys are 8 of the 16 fp16 GiB, at 8 bits 4 GiB; values at 4.5
    bits 2.25 GiB; the headline, the breakdown table and the total all take the sum."""
    open_page(app, "memory")
    app.select_slider(key="memory_context").set_value(131072).run()
    assert app.selectbox(key="memory_kv_values").value is None  # same as K by default
    total_fp16 = _table(app)["total GiB"][0]
    app.selectbox(key="memory_kv").set_value("fp8").run()
    app.selectbox(key="memory_kv_values").set_value("int4").run()
    no_exceptions(app)
    assert _metric(app, "KV cache") == "6.25 GiB"
    table = _table(app)
    assert table["KV GiB"][0] == 6.25 and table["total GiB"][0] == pytest.approx(total_fp16 - 9.75)
    per_token = next(metric for metric in app.metric if metric.label == "KV per token")
    assert per_token.value == "50.0 KiB" and "V int4" in per_token.help  # 128 KiB x 6.25 / 16


def test_engines_and_vllm_lines_for_gpt_oss(app):
    """gpt-oss-120b: half its layers slide over 128 tokens, so transformers keeps 18 full layers' tokens
    plus 18 x 128; vLLM's pages hold window - 1 + 8,192 batched tokens; the serving tab prints vLLM's two
    start-up lines, and the active count without the input embedding is the model card's 5.13B."""
    from engine.sizing.catalog import catalog_model

    open_page(app, "memory")
    app.selectbox(key="memory_catalog").set_value(catalog_model("gpt-oss-120b")).run()
    app.select_slider(key="memory_context").set_value(131072).run()
    no_exceptions(app)
    assert _metric(app, "Active per token") == "5.712 B"
    assert any("5.133 B without the input embedding" in c.value for c in app.caption)  # the card: 5.13B
    assert _metric(app, "KV cache") == "4.50 GiB"  # 18 x 2,048 B x (131,072 + 128)
    app.selectbox(key="memory_engine").set_value("vllm").run()
    no_exceptions(app)
    assert _metric(app, "KV cache") == "4.79 GiB"  # sliding layers: 8,319 tokens in 521 blocks of 16
    serving = next(frame.value for frame in app.dataframe if "GPU KV cache size (tokens)" in frame.value)
    assert (serving["GPU KV cache size (tokens)"] > 0).any()


def test_best_fit_and_offload_tabs_on_mixtral(app):
    """Mixtral-8x7B on an RTX 4090: the best format that fits one card, and how many layers of Q4_K_M fit on
    it at 8,192 tokens (the rest decoded from host memory, llama.cpp's -ngl)."""
    from engine.sizing.catalog import catalog_model
    from engine.sizing.gpus import gpu

    open_page(app, "memory")
    app.selectbox(key="memory_catalog").set_value(catalog_model("mixtral-8x7b-v0.1")).run()
    app.multiselect(key="memory_formats").set_value(["Q4_K_M", "bf16"]).run()
    app.selectbox(key="memory_gpu").set_value(gpu("RTX 4090")).run()
    no_exceptions(app)
    assert any("Best fit on one NVIDIA RTX 4090" in message.value for message in app.success)
    layers = next(slider for slider in app.slider if slider.key.startswith("memory_offload_layers"))
    assert layers.value == 25
    assert any("The speed cliff" in chart.proto.spec for chart in app.get("plotly_chart"))


def test_gpt_oss_checkpoint_layout_matches_the_published_size(app):
    """gpt-oss-120b ships its routed experts in MXFP4 and the rest in bf16: picked as the checkpoint layout,
    it becomes one more bar, and its tab prices it part by part against the model card's 60.8 GiB."""
    from engine.sizing.catalog import catalog_model

    open_page(app, "memory")
    app.selectbox(key="memory_catalog").set_value(catalog_model("gpt-oss-120b")).run()
    app.multiselect(key="memory_formats").set_value(["bf16"]).run()
    app.selectbox(key="memory_recipe_choice").set_value("gpt-oss").run()
    no_exceptions(app)
    table = _table(app)
    assert list(table["weights"]) == ["bf16 / fp16", "gpt-oss: routed experts MXFP4, the rest bf16"]
    assert table["weights GiB"][1] == pytest.approx(60.77, abs=0.01)
    assert any("published 60.80 GiB" in caption.value for caption in app.caption)
