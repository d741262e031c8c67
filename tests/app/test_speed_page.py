"""The Speed page under AppTest: a small microbenchmark and a short decode run through three decode loops,
with their charts."""

from __future__ import annotations

import pytest

from tests.app.conftest import no_exceptions, open_page
from ui.cache import session_models


@pytest.fixture(autouse=True)
def model_store(monkeypatch) -> session_models.BudgetedStore:
    """A store of the Methods lab's models for this test alone: none outlives it in the process-wide one."""
    store = session_models.BudgetedStore(session_models.budget_bytes())
    monkeypatch.setattr(session_models, "_STORE", store)
    return store


def test_speed_page_runs_a_microbenchmark_and_a_decode(app):
    open_page(app, "speed")
    assert any("CPU kernels" in info.value for info in app.info)  # the honest note
    assert not app.get("plotly_chart")  # nothing runs until asked

    shapes = app.multiselect(key="speed_shapes")
    assert (
        "49152×576 lm_head" in shapes.options and "49152×576 lm_head" not in shapes.value
    )  # offered, not run
    smallest = next(o for o in shapes.options if o.startswith("192×576"))  # k/v
    app.multiselect(key="speed_shapes").set_value([smallest])
    app.multiselect(key="speed_batches").set_value([1, 4])
    app.number_input(key="speed_repeats").set_value(3)
    app.button(key="speed_run_kernels").click().run()
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == 2  # speed-up and GB/s
    table = app.dataframe[0].value
    assert set(table["batch"]) == {1, 4}
    assert {"fp32", "W4A16", "W8A16", "W8A8", "NF4 (bnb)", "LLM.int8 (bnb)"} <= set(table["format"])
    # two figures per format, never confused: the kernel alone, and what a forward pays
    assert {"kernel µs", "call µs", "overhead µs", "speed-up (kernel)", "speed-up (call)"} <= set(
        table.columns
    )
    assert (table["kernel µs"] > 0).all() and (table["call µs"] > 0).all()
    assert (table["overhead µs"] - (table["call µs"] - table["kernel µs"])).abs().max() <= 0.11  # rounding
    assert set(table["kernel timed by"]) == {"wall clock"}
    fp32 = table[table["format"] == "fp32"]
    assert (fp32["kernel µs"] == fp32["call µs"]).all()  # its forward is its kernel: one figure on a CPU
    assert any("**kernel µs** is the kernel alone" in caption.value for caption in app.caption)
    # which kernel runs is measured, and shown: W8A16 has two CPU candidates, one chosen per bucket
    choices = next(frame.value for frame in app.dataframe if "candidate" in frame.value.columns)
    w8a16 = choices[(choices["format"] == "W8A16") & (choices["choosing"] == "kernel")]
    assert {"cpu_int8", "dequant_matmul"} <= set(w8a16["candidate"])
    assert (w8a16.groupby("rows (bucket)")["chosen"].apply(lambda c: (c == "✓").sum()) == 1).all()
    assert any("None is preferred by hand" in caption.value for caption in app.caption)

    assert "NF4 (bnb)" in app.multiselect(key="speed_variants").options
    app.multiselect(key="speed_variants").set_value(["fp32", "W4A16", "NF4 (bnb)"])
    assert app.multiselect(key="speed_loops").value == ["dynamic cache", "static cache"]  # CPU default
    app.multiselect(key="speed_loops").set_value(["dynamic cache", "static + compile"]).run()
    assert any("no CUDA graphs" in caption.value for caption in app.caption)  # said before it runs
    loops = ["dynamic cache", "transformers generate", "static cache"]  # compiling is slow on a CPU
    app.multiselect(key="speed_loops").set_value(loops)
    app.number_input(key="speed_prompt_tokens").set_value(8)
    app.number_input(key="speed_new_tokens").set_value(4)
    app.button(key="speed_run_decode").click().run()
    no_exceptions(app)
    assert len(app.get("plotly_chart")) == 4  # the kernel charts stay, decode and prefill join them
    decode = app.dataframe[-1].value
    assert list(decode["variant"]) == ["fp32"] * 3 + ["W4A16"] * 3 + ["NF4 (bnb)"] * 3
    assert list(decode["loop"]) == loops * 3
    # every loop is greedy: one variant, one answer (int4's bfloat16 kernel can tip a near-tie, so fp32)
    assert decode[decode["variant"] == "fp32"]["same tokens"].all()
    assert (decode["decode tok/s"] > 0).all() and (decode["roofline tok/s"] > 0).all()
    assert (decode["compile s"] == 0).all()
    assert any(metric.label == "Measured copy bandwidth" for metric in app.metric)


def test_speed_page_times_a_methods_lab_model(app, model_store):
    """A model built on the Methods page runs as a variant, packed from its own codes: RTN int4 asym g64
    from the lab is the Speed page's own W4A16 (same grid), so both decode the same words. A model no
    kernel runs (our LLM.int8) is named with the reason instead."""
    from engine.methods import LLMInt8Config, RTNConfig, quantize_model
    from engine.models.loading import load_model
    from engine.models.sources import ModelSource
    from engine.quant.schemes import QuantScheme
    from ui.pages.methods import RUNS, MethodRun

    reference = load_model(ModelSource(), "cpu", "float32").model
    rtn = quantize_model(reference, RTNConfig(QuantScheme(4, "int", False, "group", 64)))
    int8 = quantize_model(reference, LLMInt8Config())
    del reference
    open_page(app, "speed")
    app.session_state[RUNS] = {
        "RTN int4 g64 asym": MethodRun.keep("RTN int4 g64 asym", "RTN", rtn, None, 0.0, session="lab"),
        "LLM.int8()": MethodRun.keep("LLM.int8()", "LLM.int8()", int8, None, 0.0, session="lab"),
    }
    del rtn, int8  # held by the store alone
    app.run()
    no_exceptions(app)
    lab = "RTN int4 g64 asym (Methods lab)"
    assert lab in app.multiselect(key="speed_variants").options
    assert "LLM.int8() (Methods lab)" not in app.multiselect(key="speed_variants").options
    assert any("**LLM.int8()**" in c.value and "no fake-quantized layers" in c.value for c in app.caption)
    app.multiselect(key="speed_variants").set_value(["W4A16", lab])
    app.multiselect(key="speed_loops").set_value(["dynamic cache"])
    app.number_input(key="speed_prompt_tokens").set_value(8)
    app.number_input(key="speed_new_tokens").set_value(6)
    app.button(key="speed_run_decode").click().run()
    no_exceptions(app)
    decode = app.dataframe[-1].value
    assert list(decode["variant"]) == ["W4A16", lab]
    assert decode["first words"].iloc[0] == decode["first words"].iloc[1]
    assert abs(decode["weights MiB"].iloc[0] - decode["weights MiB"].iloc[1]) < 0.5
    # the lab's models belong to the model they were built from: another dtype is another model
    app.session_state["qe_dtype"] = "bfloat16"
    app.run()
    no_exceptions(app)
    assert lab not in app.multiselect(key="speed_variants").options
    assert not app.session_state[RUNS]
    assert not model_store.lru_keys()  # their models are freed with them


def test_a_methods_lab_model_freed_for_room_is_named_not_offered(app, model_store):
    """The store freed the older of two lab models to stay within its budget: the Speed page names it with
    the reason and offers only the one still held."""
    from engine.methods import RTNConfig, quantize_model
    from engine.quant.schemes import QuantScheme
    from tests.conftest import build_tiny_llama
    from ui.pages.methods import RUNS, MethodRun

    tiny = build_tiny_llama()
    first = quantize_model(tiny, RTNConfig(QuantScheme(4, "int", False, "group", 32)))
    second = quantize_model(tiny, RTNConfig(QuantScheme(4, "int", True, "group", 32)))
    model_store.budget = int(1.5 * session_models.model_nbytes(first.model))  # room for one
    open_page(app, "speed")
    app.session_state[RUNS] = {
        "RTN int4": MethodRun.keep("RTN int4", "RTN", first, None, 0.0, session="lab"),
        "RTN int4 sym": MethodRun.keep("RTN int4 sym", "RTN", second, None, 0.0, session="lab"),
    }
    app.run()
    no_exceptions(app)
    assert model_store.evicted("lab") == ["RTN int4"]
    options = app.multiselect(key="speed_variants").options
    assert "RTN int4 sym (Methods lab)" in options and "RTN int4 (Methods lab)" not in options
    notes = [c.value for c in app.caption if c.value.startswith("**RTN int4** (Methods lab)")]
    assert notes and "was freed to make room" in notes[0] and "results are kept" in notes[0], notes


@pytest.mark.parametrize(
    ("key", "value", "button", "message", "result"),
    [
        (
            "speed_repeats",
            1,
            "speed_run_kernels",
            "Repeats must be from 3 to 200 (it is 1).",
            "speed_kernel_run",
        ),
        (
            "speed_prompt_tokens",
            0,
            "speed_run_decode",
            "Prompt tokens must be from 1 to 2,048 (it is 0).",
            "speed_decode_run",
        ),
        (
            "speed_new_tokens",
            5000,
            "speed_run_decode",
            "New tokens must be from 2 to 1,024 (it is 5,000).",
            "speed_decode_run",
        ),
    ],
)
def test_a_number_out_of_range_is_said_and_nothing_runs(app, key, value, button, message, result):
    open_page(app, "speed")
    smallest = next(o for o in app.multiselect(key="speed_shapes").options if o.startswith("192×576"))
    app.multiselect(key="speed_shapes").set_value([smallest])
    app.multiselect(key="speed_variants").set_value(["fp32"])
    app.number_input(key=key).set_value(value)
    app.button(key=button).click().run()
    no_exceptions(app)
    errors = [e.value for e in app.error]
    assert message in errors, errors
    assert result not in app.session_state and not app.get("plotly_chart")  # nothing was timed


def test_speed_page_times_a_synthetic_catalog_config_on_cpu(app):
    """Random weights in a catalog architecture (Qwen2.5-0.5B, the CPU default), said to be synthetic."""
    open_page(app, "speed")
    app.checkbox(key="speed_synthetic").check().run()
    no_exceptions(app)
    assert app.selectbox(key="speed_synthetic_config").value == "Qwen2.5-0.5B"
    assert any("**synthetic**" in warning.value for warning in app.warning)
    app.multiselect(key="speed_variants").set_value(["bf16", "W4A16"])
    app.multiselect(key="speed_loops").set_value(["dynamic cache"])
    app.number_input(key="speed_prompt_tokens").set_value(8)
    app.number_input(key="speed_new_tokens").set_value(3)
    app.button(key="speed_run_decode").click().run()
    no_exceptions(app)
    assert any("Qwen2.5-0.5B (synthetic random weights)" in c.value for c in app.caption)
    decode = app.dataframe[-1].value
    assert list(decode["variant"]) == ["bf16", "W4A16"]
    weights = dict(zip(decode["variant"], decode["weights MiB"], strict=True))
    assert 800 < weights["bf16"] < 1000  # 0.49 B parameters in bf16
    assert weights["W4A16"] < 0.75 * weights["bf16"]  # the tied 136M-entry embedding stays bf16


def test_a_failing_kernel_is_named_once_and_its_layers_still_run(app, monkeypatch):
    """A fast kernel that raises at call time is named on the page, once, and the microbenchmark still
    times its format through the reference kernel. Injected as the only fast kernel: among several,
    engine.kernels.choice would time it first and refuse it before any call."""
    from engine.kernels import dispatch
    from engine.kernels.dispatch import KernelEntry

    def broken(rows, layer):
        raise RuntimeError("injected launch failure")

    entry = KernelEntry("broken_int8", lambda layer, device, tokens: layer.layout == "int8_rows", broken)
    monkeypatch.setattr(dispatch, "ENTRIES", [entry, dispatch.REFERENCE])
    dispatch.forget_failures()
    try:
        open_page(app, "speed")
        smallest = next(o for o in app.multiselect(key="speed_shapes").options if o.startswith("192×576"))
        app.multiselect(key="speed_shapes").set_value([smallest])
        app.multiselect(key="speed_batches").set_value([1])
        app.number_input(key="speed_repeats").set_value(3)
        app.button(key="speed_run_kernels").click().run()
        no_exceptions(app)
        notes = [w.value for w in app.warning if "broken_int8" in w.value]
        assert len(notes) == 1 and "injected launch failure" in notes[0]
        table = app.dataframe[0].value
        w8a16 = table[table["format"] == "W8A16"]
        assert (w8a16["kernel µs"] > 0).all() and (w8a16["call µs"] > 0).all()  # timed, on the reference
    finally:
        dispatch.forget_failures()
