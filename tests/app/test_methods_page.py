"""The Methods lab under AppTest: RTN, LLM.int8() and QAT on the default model, results kept in the session."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from engine.evaluation.evalset import DEFAULT_EVAL_SET
from tests.app.conftest import no_exceptions, open_page
from ui.cache import session_models
from ui.pages import methods as methods_view


@pytest.fixture(autouse=True)
def model_store(monkeypatch) -> session_models.BudgetedStore:
    """A store of the lab's models for this test alone: none outlives it in the process-wide one."""
    store = session_models.BudgetedStore(session_models.budget_bytes())
    monkeypatch.setattr(session_models, "_STORE", store)
    return store


def _stop_buttons(app) -> list:
    return [button for button in app.button if button.label == "Stop"]


def _run(app, timeout: float = 300):
    """Press Run, let the background run (ui.jobs) finish, and rerun to draw its results."""
    app.button(key="methods_run").click().run()
    no_exceptions(app)
    assert app.session_state["methods_job"].wait(timeout), "the run did not finish"
    return app.run()


def test_methods_lab_runs_two_methods_and_keeps_them(app, tmp_path, monkeypatch, model_store):
    from ui.pages import methods_export

    monkeypatch.setattr(methods_export, "exports_root", lambda: tmp_path)  # not the user's cache
    open_page(app, "methods")
    assert any("Press **Run**" in info.value for info in app.info)
    app.multiselect(key="methods_pick").set_value(["RTN", "LLM.int8()"]).run()
    app.number_input(key="methods_eval_windows").set_value(1).run()
    app.number_input(key="methods_calib_windows").set_value(1).run()
    app.select_slider(key="methods_calib_tokens").set_value(128).run()
    _run(app)
    no_exceptions(app)
    assert not _stop_buttons(app)  # shown while it ran, gone once it ended
    table = app.dataframe[0].value
    assert len(table) == 2
    scored = [c.value for c in app.caption if c.value.startswith("Scored on 1 window × 256 tokens")]
    assert scored and "not the default set" in scored[0], [c.value for c in app.caption]
    rtn = table[table["method"].str.startswith("RTN")].iloc[0]
    assert abs(rtn["bits/weight (linears)"] - 4.25) < 1e-6  # int4 g64 with fp16 scales
    assert all(table["top-1 agreement"] > 0.3)
    # llama.cpp's drift statistics: the 99th KL percentile lies above the mean, RMS Δp is a probability
    assert all(table["KL p99"] > table["mean KL"]) and all(table["RMS Δp"].between(0, 1, inclusive="neither"))
    assert any("KL divergence per token" in c.proto.spec for c in app.get("plotly_chart"))
    assert len(app.get("plotly_chart")) >= 2
    app.run()  # kept in the session: no rerun of the methods
    no_exceptions(app)
    assert len(app.dataframe[0].value) == 2
    # save RTN as a GPTQ checkpoint; LLM.int8's per-call outlier split is no weight format
    assert app.selectbox(key="methods_export_run").options[0].startswith("RTN")
    assert app.radio(key="methods_export_format").options[:2] == [
        "GPTQ checkpoint (AutoGPTQ layout; loads in transformers with optimum + gptqmodel)",
        "AWQ checkpoint (AutoAWQ GEMM layout; loads in transformers with gptqmodel)",
    ]
    app.button(key="methods_export_save").click().run()
    no_exceptions(app)
    saved = [s.value for s in app.success if "Saved gptq checkpoint" in s.value]
    assert saved, [e.value for e in app.error]
    folder = Path(saved[0].split("`")[1])
    assert folder.parent == tmp_path
    assert (folder / "model.safetensors").stat().st_size < 120e6  # int4 linears + 16-bit embeddings
    assert '"quant_method": "gptq"' in (folder / "config.json").read_text()
    int8_label = next(o for o in app.selectbox(key="methods_export_run").options if o.startswith("LLM"))
    app.selectbox(key="methods_export_run").set_value(int8_label).run()
    no_exceptions(app)
    assert any("cannot be saved" in i.value and "bitsandbytes int8" in i.value for i in app.info)
    app.button(key="methods_clear").click().run()
    no_exceptions(app)
    assert not app.dataframe
    assert not model_store.lru_keys()  # Clear results frees the models too


def test_the_evaluation_windows_default_to_evaluates_set_and_q4_1_is_one_line(app):
    open_page(app, "methods")
    assert app.number_input(key="methods_eval_windows").value == DEFAULT_EVAL_SET.windows
    notes = [c.value for c in app.caption if "Q4_1" in c.value]
    assert len(notes) == 1 and len(notes[0]) < 190 and "](overview)" in notes[0], notes


def test_gptq_beside_rtn_shows_output_error_first_and_explains_its_weight_sqnr(app):
    """GPTQ minimises output error, not weight error: that chart comes first, the SQNR chart says why GPTQ
    sits below RTN there, and the perplexity gap to RTN is weighed against the window-to-window noise."""
    open_page(app, "methods")
    app.multiselect(key="methods_pick").set_value(["RTN", "GPTQ"]).run()
    app.number_input(key="methods_eval_windows").set_value(2).run()
    app.number_input(key="methods_calib_windows").set_value(1).run()
    app.select_slider(key="methods_calib_tokens").set_value(128).run()
    _run(app)
    no_exceptions(app)
    assert len(app.dataframe[0].value) == 2
    charts = [chart.proto.spec for chart in app.get("plotly_chart")]
    assert "Layer output error" in charts[0] and "Weight SQNR" in charts[1]
    assert "GPTQ minimises each layer" in charts[1] and "not weight error" in charts[1]
    gaps = [c.value for c in app.caption if c.value.startswith("GPTQ") and "vs RTN" in c.value]
    assert gaps and "on 2 window(s)" in gaps[0] and "window-to-window noise" in gaps[0], gaps


def test_methods_lab_runs_qat_at_3_bits_and_draws_its_training_curve(app):
    open_page(app, "methods")
    app.multiselect(key="methods_pick").set_value(["QAT"]).run()
    app.select_slider(key="methods_bits").set_value(3).run()
    app.number_input(key="methods_eval_windows").set_value(1).run()
    app.number_input(key="methods_calib_windows").set_value(2).run()
    app.select_slider(key="methods_calib_tokens").set_value(128).run()
    app.number_input(key="methods_qat_steps").set_value(2).run()
    _run(app)
    no_exceptions(app)
    table = app.dataframe[0].value
    assert list(table["method"]) == ["QAT int3 asym g64 2 steps lr 0.0003"]
    row = table.iloc[0]
    assert abs(row["bits/weight (linears)"] - 3.5) < 1e-6  # int3 g64 with an fp16 scale and zero point
    # QAT's held-out windows are the page's evaluation windows: its losses are the table's perplexities
    trace = methods_view.trace_of(app.session_state["methods_runs"][row["method"]])
    assert len(trace.train_loss) == 2
    assert abs(math.log(row["perplexity"]) - trace.qat_loss) < 1e-3
    assert trace.qat_loss < trace.ptq_loss  # measured: 4.93 (PTQ) -> 4.66 after 2 steps of 128 tokens
    assert any(chart.proto.spec and "held-out" in chart.proto.spec for chart in app.get("plotly_chart"))
    assert any("QAT steps" in caption.value for caption in app.caption)
    app.run()  # kept in the session: no retraining
    no_exceptions(app)
    assert len(app.dataframe[0].value) == 1


@pytest.mark.parametrize(
    ("pick", "key", "value", "message"),
    [
        (["RTN"], "methods_calib_windows", 0, "Calibration windows must be from 1 to 128 (it is 0)."),
        (["RTN"], "methods_eval_windows", 99, "Evaluation windows must be from 1 to 16 (it is 99)."),
        (
            ["LLM.int8()"],
            "methods_llmint8_threshold",
            0.0,
            "LLM.int8() outlier threshold must be from 0.5 to 1,000.0 (it is 0.0).",
        ),
        (["GPTQ"], "methods_gptq_damp", 0.0, "GPTQ damping must be from 0.001 to 0.5 (it is 0.0)."),
        (["QAT"], "methods_qat_steps", 0, "QAT training steps must be from 1 to 500 (it is 0)."),
    ],
)
def test_a_number_out_of_range_is_said_by_the_run_button_and_nothing_runs(app, pick, key, value, message):
    open_page(app, "methods")
    app.multiselect(key="methods_pick").set_value(pick).run()
    app.number_input(key=key).set_value(value)
    app.button(key="methods_run").click().run()
    no_exceptions(app)
    errors = [error.value for error in app.error]
    assert errors == [message], errors  # said once, with no second complaint from the method's config
    assert not app.session_state["methods_runs"] and not app.dataframe  # nothing ran
    assert "methods_job" not in app.session_state
    assert not any("Press **Run**" in info.value for info in app.info)


def test_a_run_over_the_memory_budget_frees_the_older_model_and_keeps_its_results(app, model_store):
    """Two RTN runs with room for one model: the second frees the first's. Its row and figures stay, the
    page and its export section say why the model is gone, and Run builds it again (freeing the other)."""
    open_page(app, "methods")
    app.multiselect(key="methods_pick").set_value(["RTN"]).run()
    app.number_input(key="methods_eval_windows").set_value(1).run()
    _run(app)
    no_exceptions(app)
    assert not _stop_buttons(app)
    first = app.dataframe[0].value["method"].iloc[0]
    model_store.budget = int(1.5 * model_store.total)  # room for one quantized copy, not two
    app.select_slider(key="methods_bits").set_value(8).run()
    _run(app)
    no_exceptions(app)
    table = app.dataframe[0].value
    assert list(table["method"]) == [first, "RTN int8 g64"], list(table["method"])
    assert table["perplexity"].notna().all()  # the freed run's scores are kept
    assert [name for _, name in model_store.lru_keys()] == ["RTN int8 g64"]
    budget = session_models.format_bytes(model_store.budget)
    freed = [i.value for i in app.info if i.value.startswith(f"**{first}**")]
    assert freed and "was freed to make room" in freed[0] and budget in freed[0], [i.value for i in app.info]
    assert app.selectbox(key="methods_export_run").value == first  # its export says why, offers nothing
    assert any(i.value.startswith("This run's quantized model was freed") for i in app.info)
    assert "methods_export_format" not in [radio.key for radio in app.radio]
    app.select_slider(key="methods_bits").set_value(4).run()
    assert any("Press **Run** to quantize with RTN" in i.value for i in app.info)  # it can be run again
    _run(app)
    no_exceptions(app)
    assert [name for _, name in model_store.lru_keys()] == [first]
    assert len(app.dataframe[0].value) == 2
    assert any(i.value.startswith("**RTN int8 g64**") for i in app.info)


@pytest.fixture
def held_method(monkeypatch):
    """The quantization of a method of type `gate.held` (LLM.int8() unless the test says) waits at its start
    until the test opens the gate, reporting progress so that Stop ends it there; other methods run as
    usual. Yields the gate."""
    import threading

    from engine.methods.llm_int8 import LLMInt8Config
    from ui.pages import methods_job

    real_quantize = methods_job.quantize_model
    gate = threading.Event()
    gate.held = LLMInt8Config

    def held(reference, config, calib=None, progress=None):
        while isinstance(config, gate.held) and not gate.wait(0.02):
            progress(0.0, "held by the test")  # raises Stopped once Stop was pressed
        return real_quantize(reference, config, calib=calib, progress=progress)

    monkeypatch.setattr(methods_job, "quantize_model", held)
    yield gate
    gate.set()


def _start(app, methods: list[str]):
    """Pick `methods` (one window each), press Run; returns the running job and its LabRun."""
    open_page(app, "methods")
    app.multiselect(key="methods_pick").set_value(methods).run()
    app.number_input(key="methods_eval_windows").set_value(1).run()
    app.number_input(key="methods_calib_windows").set_value(1).run()
    app.select_slider(key="methods_calib_tokens").set_value(128).run()
    app.button(key="methods_run").click().run()
    no_exceptions(app)
    job, lab = app.session_state["methods_job"], app.session_state["methods_lab_run"]
    assert job.running and _stop_buttons(app) and app.button(key="methods_clear").disabled
    assert any("(1/" in bar.proto.text or "Starting" in bar.proto.text for bar in app.get("progress"))
    return job, lab


def test_a_methods_run_goes_on_while_other_widgets_change(app, held_method):
    """The run is a background job: changing a widget and a second Run press rerun the page without
    cancelling it (the second is refused, in words), and the run finishes."""
    from engine.methods import RTNConfig

    held_method.held = RTNConfig
    job, _ = _start(app, ["RTN"])
    app.select_slider(key="methods_bits").set_value(8).run()
    app.button(key="methods_run").click().run()  # refused while the first run goes on
    no_exceptions(app)
    assert any("still running" in warning.value for warning in app.warning)
    assert app.session_state["methods_job"] is job and job.running and _stop_buttons(app)
    held_method.set()
    assert job.wait(120)
    app.run()
    no_exceptions(app)
    assert list(app.dataframe[0].value["method"]) == ["RTN int4 g64"]  # the settings it started with
    assert not _stop_buttons(app)
    assert any("Press **Run** to quantize with RTN" in info.value for info in app.info)  # int8: not run yet


def test_stop_ends_a_methods_run_and_keeps_the_finished_methods(app, held_method):
    """RTN finishes while LLM.int8() is held: its row shows mid-run; Stop ends the run and keeps it."""
    job, lab = _start(app, ["RTN", "LLM.int8()"])
    for _ in range(3000):  # RTN's quantization and scoring: a few seconds
        with job.lock:
            if lab.done or lab.failed:
                break
        job.wait(0.05)
    assert lab.done == ["RTN int4 g64"] and not lab.failed and job.running
    app.run()
    no_exceptions(app)
    assert list(app.dataframe[0].value["method"]) == ["RTN int4 g64"]  # the finished method, mid-run
    assert _stop_buttons(app) and app.button(key="methods_clear").disabled
    app.button(key="methods_stop").click().run()  # waits a moment for the run to end: usually said here
    no_exceptions(app)
    said = [info.value for info in app.info]
    assert job.wait(60)
    app.run()
    no_exceptions(app)
    said += [info.value for info in app.info]
    assert list(app.dataframe[0].value["method"]) == ["RTN int4 g64"]
    assert list(app.session_state["methods_runs"]) == ["RTN int4 g64"]
    assert sum("The run was stopped: 1 of 2 methods finished" in info for info in said) == 1, said
    assert any("Press **Run** to quantize with LLM.int8()" in info for info in said)  # offered again
    assert not _stop_buttons(app)


def test_old_exports_are_pruned(tmp_path):
    import os

    from ui.pages.methods_export import _prune

    for index in range(6):
        folder = tmp_path / f"export-{index}"
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 1000)
        os.utime(folder, (index, index))  # export-5 is the newest
    _prune(tmp_path, keep=4, keep_bytes=10**9)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"export-{i}" for i in (2, 3, 4, 5)]
    _prune(tmp_path, keep=4, keep_bytes=1500)  # the newest always stays, even alone over the budget
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export-5"]


def test_a_gguf_run_saves_one_gguf_file_with_a_download_button(app, tmp_path, monkeypatch):
    import gguf

    from ui.pages import methods_export

    monkeypatch.setattr(methods_export, "exports_root", lambda: tmp_path)  # not the user's cache
    open_page(app, "methods")
    app.multiselect(key="methods_pick").set_value(["GGUF (llama.cpp)"]).run()
    app.selectbox(key="methods_ggufllamacpp_type").set_value("Q8_0").run()
    app.checkbox(key="methods_ggufllamacpp_emb").uncheck().run()
    app.number_input(key="methods_eval_windows").set_value(1).run()
    _run(app)
    no_exceptions(app)
    assert app.radio(key="methods_export_format").options == [
        "GGUF file for llama.cpp (the GGUF method's block types)",
        "GGUF file for llama.cpp, weights in float16 (no size saving)",
    ]
    app.button(key="methods_export_save").click().run()
    no_exceptions(app)
    saved = [s.value for s in app.success if "Saved gguf checkpoint" in s.value]
    assert saved, [e.value for e in app.error]
    path = Path(saved[0].split("`")[1]) / "SmolLM2-135M-Instruct-Q8_0.gguf"
    kinds = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert kinds == {"Q8_0", "F16", "F32"}  # linears, the embedding, the norms
    assert any(f"llama-cli -m {path.name}" in c.value for c in app.caption)
    assert any(b.label == f"Download {path.name}" for b in app.get("download_button"))
