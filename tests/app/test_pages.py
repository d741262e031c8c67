"""Every page runs under AppTest without an exception; the overview shows the real model's numbers."""

from __future__ import annotations

import pytest

from tests.app.conftest import PAGES, no_exceptions, open_page


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(app, page):
    open_page(app, page)
    assert app.title, f"page {page} has no title"


def test_overview_shows_default_architecture(app):
    open_page(app, "overview")
    metrics = {metric.label: metric.value for metric in app.metric}
    assert metrics["Layers"] == "30"
    assert metrics["Hidden size"] == "576"
    assert metrics["Heads / KV heads"] == "9 / 3"
    assert metrics["Head dim"] == "64"
    assert metrics["Vocabulary"] == "49,152"
    assert "Q4_1" in app.info[0].value


def test_overview_quick_generation(app):
    open_page(app, "overview")
    app.text_area[0].set_value("What is the capital of France?")
    app.button(key="qe_overview_generate").click().run()
    no_exceptions(app)
    assert any("Paris" in markdown.value for markdown in app.markdown)
    assert any("tok/s" in caption.value for caption in app.caption)


def test_overview_empty_prompt_is_a_clear_error(app):
    open_page(app, "overview")
    app.text_area[0].set_value("   ")
    app.button(key="qe_overview_generate").click().run()
    no_exceptions(app)
    assert any("prompt is empty" in error.value for error in app.error)


@pytest.mark.parametrize(
    ("kind", "location", "message"),
    [
        ("folder", "/nonexistent/model/folder", "Folder not found"),
        ("hub", "HuggingFaceTB/definitely-not-cached-model-xyz", "offline"),
        ("gguf", "/etc/hostname.gguf", "GGUF file not found"),
        ("folder", "", "box is empty"),
        ("folder", "/tmp/" + "a" * 300, "longer than this system allows"),  # one name over 255 characters
        ("folder", "/tmp/" + "/".join(["b" * 200] * 30), "longer than this system allows"),  # over PATH_MAX
        ("gguf", "/tmp/" + "a" * 300 + ".gguf", "longer than this system allows"),
        ("folder", "/tmp/model\x00folder", "null character"),
    ],
)
def test_bad_model_source_is_a_clear_error(app, monkeypatch, kind, location, message):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    open_page(app, "overview")
    app.radio(key="qe_pick_kind").set_value(kind)
    app.text_input(key="qe_pick_location").set_value(location)
    app.button(key="qe_load_model").click().run()
    no_exceptions(app)
    errors = [error.value for error in app.sidebar.error]
    assert any(message in error for error in errors), errors
    # the app keeps working on the previous model, and the sidebar is whole (its glossary below)
    assert {metric.label: metric.value for metric in app.metric}["Layers"] == "30"
    assert any(e.label == "Glossary" for e in app.sidebar.expander)


def test_a_long_path_replaces_the_last_error_on_every_page(app):
    """Issue 22: a name over 255 characters crashed the page, hid the rest of the sidebar, and left
    the attempt before it as the error the next page showed."""
    open_page(app, "overview")
    app.radio(key="qe_pick_kind").set_value("folder")
    app.text_input(key="qe_pick_location").set_value("/nonexistent/model/folder")
    app.button(key="qe_load_model").click().run()
    app.text_input(key="qe_pick_location").set_value("/tmp/" + "c" * 300)
    app.button(key="qe_load_model").click().run()
    no_exceptions(app)
    for _ in ("this page", "the next page"):
        errors = [error.value for error in app.sidebar.error]
        assert len(errors) == 1 and "longer than this system allows" in errors[0], errors
        assert "/nonexistent" not in errors[0] and "Errno" not in errors[0]
        assert any(e.label == "Glossary" for e in app.sidebar.expander)
        app.switch_page("pages/grid.py").run()
        no_exceptions(app)


def test_corrupt_gguf_in_the_ui(app, tmp_path):
    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    open_page(app, "overview")
    app.radio(key="qe_pick_kind").set_value("gguf")
    app.text_input(key="qe_pick_location").set_value(str(bad))
    app.button(key="qe_load_model").click().run()
    no_exceptions(app)
    assert any("Could not read corrupt.gguf" in error.value for error in app.sidebar.error)


def test_load_a_local_folder(app, tiny_model_dir):
    open_page(app, "overview")
    app.radio(key="qe_pick_kind").set_value("folder")
    app.text_input(key="qe_pick_location").set_value(str(tiny_model_dir))
    app.button(key="qe_load_model").click().run()
    no_exceptions(app)
    assert not app.sidebar.error
    assert {metric.label: metric.value for metric in app.metric}["Layers"] == "2"
