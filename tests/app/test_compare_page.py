"""The Compare page under AppTest: the reference and an int8 variant generate side by side."""

from __future__ import annotations

import re

import pytest

from tests.app.conftest import no_exceptions, open_page


def _metric(app, label):
    """Each column's value for `label` from its one-line summary ("Agreement **86%** · first divergence ...")."""
    pattern = re.compile(rf"{label} \*\*([^*]+)\*\*", re.IGNORECASE)
    return [m.group(1) for md in app.markdown if (m := pattern.search(md.value))]


def _generate(app, timeout: float = 120):
    """Press Generate, let the background generation (ui.jobs) finish, and rerun to draw its result."""
    app.button(key="compare_generate").click().run()
    no_exceptions(app)
    assert app.session_state["compare_job"].wait(timeout), "the generation did not finish"
    return app.run()


def _token_boxes(app):
    return [markdown.value for markdown in app.markdown if 'title="token 0:' in markdown.value]


def test_reference_and_int8_side_by_side(app):
    open_page(app, "compare")
    app.multiselect(key="compare_variants").set_value(["W8"])
    app.slider(key="compare_max_new_tokens").set_value(8)
    _generate(app)
    no_exceptions(app)
    assert not app.error, [error.value for error in app.error]
    boxes = _token_boxes(app)
    assert len(boxes) == 2  # the reference and the int8 column, each with per-token tooltips
    assert all("p reference" in box for box in boxes)
    assert "KL(reference" in boxes[1]
    agreement = _metric(app, "Agreement")
    assert agreement[0] == "—" and agreement[1].endswith("%")
    assert not [button for button in app.button if button.label == "Stop"]  # it leaves with the run
    assert any("tok/s" in caption.value for caption in app.caption)
    # a rerun (toggling a checkbox) redraws the stored run without generating again
    stored = app.session_state["compare_run"]
    app.checkbox(key="compare_shade_kl").check().run()
    no_exceptions(app)
    assert app.session_state["compare_run"] is stored
    assert len(_token_boxes(app)) == 2
    assert "border-bottom:3px" in _token_boxes(app)[1]


def test_empty_prompt_is_a_clear_error_and_the_page_keeps_working(app):
    open_page(app, "compare")
    app.text_area(key="compare_prompt").set_value("   ")
    app.button(key="compare_generate").click().run()  # refused: nothing starts
    no_exceptions(app)
    assert any("prompt is empty" in error.value for error in app.error)
    app.text_area(key="compare_prompt").set_value("Name a colour.")
    app.multiselect(key="compare_variants").set_value(["KV4"])
    app.slider(key="compare_max_new_tokens").set_value(4)
    _generate(app)
    no_exceptions(app)
    assert not app.error
    assert len(_token_boxes(app)) == 2


def test_out_of_memory_is_explained_and_the_app_stays_up(app, monkeypatch):
    """A CUDA OOM (simulated: CI has no GPU) during generation: a message naming what to lower, the
    memory freed, and the next generation works."""
    import torch

    import ui.errors
    import ui.pages.compare

    real_generate = ui.pages.compare.generate_measured
    freed = []
    monkeypatch.setattr(ui.errors, "free_after_oom", lambda: freed.append(True))

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    open_page(app, "compare")
    app.multiselect(key="compare_variants").set_value(["W8"])
    app.slider(key="compare_max_new_tokens").set_value(4)
    monkeypatch.setattr(ui.pages.compare, "generate_measured", out_of_memory)
    _generate(app)
    no_exceptions(app)
    errors = [error.value for error in app.error]
    assert errors and all("Out of memory" in e and "max new tokens" in e for e in errors), errors
    assert freed, "the cache was not freed"
    monkeypatch.setattr(ui.pages.compare, "generate_measured", real_generate)
    _generate(app)
    no_exceptions(app)
    assert not app.error and len(_token_boxes(app)) == 2


def test_the_models_own_4_bit_grid_is_a_default_column_and_matches_the_reference(app):
    """The default model was distributed as Q4_1: W4 Q4_1 is offered and picked by default beside W4, the
    page says why in one linked line, and that column generates the reference's tokens."""
    open_page(app, "compare")
    picker = app.multiselect(key="compare_variants")
    assert picker.value[:2] == ["W4 Q4_1", "W4"]
    notes = [c.value for c in app.caption if "distributed as llama.cpp Q4_1" in c.value]
    assert len(notes) == 1 and len(notes[0]) < 190 and "](overview)" in notes[0], notes
    picker.set_value(["W4 Q4_1"])
    app.slider(key="compare_max_new_tokens").set_value(8)
    _generate(app)
    no_exceptions(app)
    run = app.session_state["compare_run"]
    assert run.columns[1].label == "W4 Q4_1 (int4 asym_min g32)"
    assert run.columns[1].token_ids == run.columns[0].token_ids
    assert _metric(app, "Agreement")[1] == "100%"


def _column_captions(app, text):
    return [caption.value for caption in app.caption if text in caption.value]


def test_a_4_bit_column_shows_packed_memory_below_the_reference_and_what_the_process_holds(app):
    """Fake-quantized weights are held in float32 (more bytes than the reference); the column and the
    table also say what the 4-bit format takes packed, which is far below the reference."""
    open_page(app, "compare")
    app.multiselect(key="compare_variants").set_value(["W4"])
    app.slider(key="compare_max_new_tokens").set_value(4)
    _generate(app)
    no_exceptions(app)
    assert not app.error, [error.value for error in app.error]
    reference_line, w4_line = _column_captions(app, "memory **")
    assert "packed and held" in reference_line
    assert " packed (weights " in w4_line and "this process holds" in w4_line
    assert "fake-quantized in float32" in w4_line
    table = app.dataframe[0].value.set_index("model")
    reference, w4 = table.index
    assert table.loc[reference, "packed MiB"] == table.loc[reference, "held MiB"]
    assert table.loc[w4, "packed MiB"] < 0.5 * table.loc[reference, "packed MiB"]  # 4.25 bits, head 32
    assert table.loc[w4, "held MiB"] > table.loc[reference, "held MiB"]  # dequantized, plus scales


@pytest.fixture
def no_evaluate_results():
    """Evaluate's cached cells, emptied for the test and restored after (other tests may have run it)."""
    from ui.cache.variants import grid_results

    results = grid_results()
    saved = dict(results)
    results.clear()
    yield results
    results.clear()
    results.update(saved)


def test_each_variant_shows_this_prompts_figure_beside_evaluates_corpus_figure(app, no_evaluate_results):
    """Without Evaluate results the column says so (with a link); once the Evaluate grid holds the same
    recipe for this model, the column shows its Δ perplexity, KL and top-1 beside this prompt's."""
    from engine.evaluation.study import CellResult

    open_page(app, "compare")
    app.multiselect(key="compare_variants").set_value(["W4", "KV4"])
    app.slider(key="compare_max_new_tokens").set_value(4)
    _generate(app)
    no_exceptions(app)
    prompt_lines = _column_captions(app, "**This prompt** (4 tokens, same prefix): mean KL")
    assert len(prompt_lines) == 2
    assert all("Evaluate's corpus figure: not computed yet" in line for line in prompt_lines)
    assert all("](evaluate)" in line and "One prompt is one sample" in line for line in prompt_lines)
    run = app.session_state["compare_run"]
    key = (run.model_key, "fingerprint", (4, 256), 64)  # what the Evaluate page keys its cells by
    no_evaluate_results[key] = {"W4": CellResult("W4", "weights", 108.7, 72.93, 0.4123, 9.1, 0.54, 1020, 1.0)}
    app.checkbox(key="compare_shade_kl").check().run()  # a rerun redraws the stored run
    no_exceptions(app)
    w4_line, kv4_line = _column_captions(app, "**This prompt** (4 tokens")
    assert (
        "**Evaluate's corpus figure** (W4, 1,020 tokens): Δ perplexity **+49.0%** · mean KL **0.4123** "
        "nats · top-1 agreement **54%**" in w4_line
    )
    assert "averages 1,020 tokens" in w4_line
    assert "not computed yet" in kv4_line


def test_a_first_token_divergence_shows_the_reference_near_tie():
    """Where the greedy texts part, the reference's two likeliest tokens are shown; close ones are
    called a near-tie, which one prompt's divergence can come from."""
    from engine.evaluation.token_compare import TokenStat
    from ui.pages.compare import ColumnRun, VariantSpec
    from ui.pages.compare_figures import prompt_vs_corpus

    reference = ColumnRun("Reference", None, token_ids=[5, 6, 7])
    stats = [TokenStat(i, t, 0.38, 0.5, 0.02, 5, t, (0.41, 0.38)) for i, t in enumerate([9, 6, 7])]
    variant = ColumnRun("KV4", VariantSpec("KV4", "KV4", None), token_ids=[9, 6, 7], stats=stats)
    lines = prompt_vs_corpus(variant, reference, None)
    assert any("At token 0" in line and "41% vs 38% likely — a near-tie" in line for line in lines)
    assert "not computed yet" in lines[1]


@pytest.fixture
def held_generation(monkeypatch):
    """Each column's generation waits at its start until the test opens the gate (or Stop is pressed), so
    the test clicks while the run is under way; yields the gate."""
    import threading

    import ui.pages.compare

    real_generate = ui.pages.compare.generate_measured
    gate = threading.Event()

    def held(*args, **kwargs):
        should_stop = args[6]
        while not gate.wait(0.02) and not should_stop():
            pass
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(ui.pages.compare, "generate_measured", held)
    yield gate
    gate.set()


def _stop_buttons(app):
    return [button for button in app.button if button.label == "Stop"]


def test_a_generation_goes_on_while_other_widgets_change(app, held_generation):
    """Generation runs in the background: a checkbox, a new prompt and a second Generate press rerun the
    page without cancelling it; progress and Stop stay visible, and the run finishes normally."""
    open_page(app, "compare")
    app.multiselect(key="compare_variants").set_value(["KV4"])
    app.slider(key="compare_max_new_tokens").set_value(4)
    app.button(key="compare_generate").click().run()
    no_exceptions(app)
    job = app.session_state["compare_job"]
    assert job.running and _stop_buttons(app)
    assert [
        bar for bar in app.get("progress") if "Starting" in bar.proto.text or "Generating" in bar.proto.text
    ]
    app.checkbox(key="compare_shade_kl").check().run()
    app.text_area(key="compare_prompt").set_value("Name a colour.")
    app.button(key="compare_generate").click().run()  # refused while the first one runs
    no_exceptions(app)
    assert any("still running" in warning.value for warning in app.warning)
    assert app.session_state["compare_job"] is job and job.running and _stop_buttons(app)
    held_generation.set()
    assert job.wait(60)
    app.run()
    no_exceptions(app)
    run = app.session_state["compare_run"]
    assert run.finished and not run.interrupted and run.prompt != "Name a colour."
    assert len(_token_boxes(app)) == 2 and app.dataframe and not _stop_buttons(app)
    assert "border-bottom:3px" in _token_boxes(app)[1]  # the checkbox changed mid-run applies


def test_stop_keeps_the_tokens_so_far_and_skips_the_rest(app, held_generation):
    open_page(app, "compare")
    app.multiselect(key="compare_variants").set_value(["KV4"])
    app.slider(key="compare_max_new_tokens").set_value(16)
    app.button(key="compare_generate").click().run()
    job = app.session_state["compare_job"]
    app.button(key="compare_stop").click().run()
    assert job.wait(60)
    app.run()
    no_exceptions(app)
    run = app.session_state["compare_run"]
    assert run.interrupted
    reference, kv4 = run.columns
    assert reference.status == "stopped" and 1 <= len(reference.token_ids) < 16
    assert kv4.status == "waiting"
    assert any("The last run was stopped" in info.value for info in app.info)
    assert any("Not generated: the run was stopped first." in info.value for info in app.info)
