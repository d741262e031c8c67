"""The Compare page under AppTest: the reference and an int8 variant generate side by side."""

from __future__ import annotations

from tests.app.conftest import no_exceptions, open_page


def _metric(app, label):
    return [metric.value for metric in app.metric if metric.label == label]


def _token_boxes(app):
    return [markdown.value for markdown in app.markdown if 'title="token 0:' in markdown.value]


def test_reference_and_int8_side_by_side(app):
    open_page(app, "compare")
    app.multiselect(key="compare_variants").set_value(["W8"])
    app.slider(key="compare_max_new_tokens").set_value(8)
    app.button(key="compare_generate").click().run()
    no_exceptions(app)
    assert not app.error, [error.value for error in app.error]
    boxes = _token_boxes(app)
    assert len(boxes) == 2  # the reference and the int8 column, each with per-token tooltips
    assert all("p reference" in box for box in boxes)
    assert "KL(reference" in boxes[1]
    agreement = _metric(app, "Agreement")
    assert agreement[0] == "—" and agreement[1].endswith("%")
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
    app.button(key="compare_generate").click().run()
    no_exceptions(app)
    assert any("prompt is empty" in error.value for error in app.error)
    app.text_area(key="compare_prompt").set_value("Name a colour.")
    app.multiselect(key="compare_variants").set_value(["KV4"])
    app.slider(key="compare_max_new_tokens").set_value(4)
    app.button(key="compare_generate").click().run()
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
    app.button(key="compare_generate").click().run()
    no_exceptions(app)
    errors = [error.value for error in app.error]
    assert errors and all("Out of memory" in e and "max new tokens" in e for e in errors), errors
    assert freed, "the cache was not freed"
    monkeypatch.setattr(ui.pages.compare, "generate_measured", real_generate)
    app.button(key="compare_generate").click().run()
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
    app.button(key="compare_generate").click().run()
    no_exceptions(app)
    run = app.session_state["compare_run"]
    assert run.columns[1].label == "W4 Q4_1 (int4 asym_min g32)"
    assert run.columns[1].token_ids == run.columns[0].token_ids
    assert _metric(app, "Agreement")[1] == "100%"
