"""Issue 22, silent refusals: every limit the app enforces is said on the page, in words.

Numbers out of range (Streamlit's own min/max refused them in the browser, the reason only in a tooltip),
a prompt over the length limit (the box dropped the paste), uploaders advertising 50 MB while the app took
20 MiB, a Hub id answered after ~22 s offline, and a config whose build hit the C++ allocator."""

from __future__ import annotations

import json
import socket
import time
import tomllib

import pytest

from engine.models.data import MAX_UPLOAD_BYTES
from engine.models.sources import MAX_CONFIG_BYTES
from tests.app.conftest import ROOT, no_exceptions, open_page


def _errors(app) -> list[str]:
    return [error.value for error in app.error]


def _click(key: str):
    return lambda app: app.button(key=key).click().run()


def _run(app) -> None:
    app.run()


def _synthetic(app) -> None:
    app.segmented_control(key="grid_source").set_value("Synthetic").run()


@pytest.mark.parametrize(
    ("page", "before", "key", "value", "then", "message"),
    [
        ("memory", None, "memory_batch", 0, _run, "Batch must be from 1 to 4,096 (it is 0)."),
        (
            "compare",
            None,
            "compare_temperature",
            5.0,
            _click("compare_generate"),
            "Temperature must be from 0.0",
        ),
        ("compare", None, "compare_top_p", 0.0, _click("compare_generate"), "Top-p must be from 0.05 to 1.0"),
        (
            "compare",
            None,
            "compare_seed",
            -1,
            _click("compare_generate"),
            "Seed must be from 0 to 2,147,483,647",
        ),
        ("grid", _synthetic, "grid_syn_rows", 0, _run, "Rows must be from 1 to 1,024 (it is 0)."),
        ("grid", _synthetic, "grid_syn_cols", 5000, _run, "Columns must be from 8 to 4,096"),
        ("outliers", None, "outliers_windows", 0, _click("outliers_collect"), "Windows must be from 1 to 32"),
        ("outliers", None, "outliers_threshold", 0.0, _run, "The outlier threshold must be from 0.5"),
        ("learn", None, "learn_qat_seed", -1, _run, "Seed must be from 0 to 999 (it is -1)."),
    ],
)
def test_a_number_out_of_range_is_refused_in_words(app, page, before, key, value, then, message):
    open_page(app, page)
    if before:
        before(app)
    app.number_input(key=key).set_value(value)
    then(app)
    no_exceptions(app)
    assert any(message in error for error in _errors(app)), _errors(app)
    if page == "compare":
        assert "compare_run" not in app.session_state  # nothing generated


def test_an_out_of_range_batch_recovers_when_fixed(app):
    open_page(app, "memory")
    app.number_input(key="memory_batch").set_value(0).run()
    assert not app.metric
    app.number_input(key="memory_batch").set_value(2).run()
    no_exceptions(app)
    assert not _errors(app) and app.metric


def test_a_collect_click_with_a_bad_number_does_not_collect_later(app):
    open_page(app, "outliers")
    app.number_input(key="outliers_windows").set_value(0)
    app.button(key="outliers_collect").click().run()
    app.number_input(key="outliers_windows").set_value(2).run()  # fixed, but Collect was not pressed again
    no_exceptions(app)
    assert any("Press **Collect statistics**" in info.value for info in app.info)


@pytest.mark.parametrize(
    ("page", "key"), [("compare", "compare_generate"), ("overview", "qe_overview_generate")]
)
def test_a_prompt_over_the_limit_is_refused_in_words(app, page, key):
    open_page(app, page)
    prompt = app.text_area(key="compare_prompt") if page == "compare" else app.text_area[0]
    assert not prompt.proto.max_chars  # the box no longer drops a long paste silently
    prompt.set_value("Tell me about Paris. " * 1_100)  # 23,100 characters
    app.button(key=key).click().run()
    no_exceptions(app)
    assert any("23,100 characters long; the limit is 20,000" in error for error in _errors(app)), _errors(app)


def test_uploaders_advertise_the_limit_the_app_enforces(app):
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_BYTES // 2**20  # every uploader's "Limit 20MB"
    open_page(app, "outliers")
    app.selectbox(key="outliers_corpus").set_value("upload").run()
    assert app.file_uploader[0].proto.max_upload_size_mb == MAX_UPLOAD_BYTES // 2**20
    app.switch_page("pages/memory.py").run()
    app.segmented_control(key="memory_source").set_value("Upload config.json").run()
    no_exceptions(app)
    assert app.file_uploader[0].proto.max_upload_size_mb == MAX_CONFIG_BYTES // 2**20


def test_a_hub_id_offline_is_answered_within_seconds(app, monkeypatch):
    """A resolver that does not answer (the ~20 s a DNS lookup can hang): the page still says at once
    that the machine is offline. A socket timeout alone does not bound the lookup."""
    import huggingface_hub.constants

    import engine.models.sources as sources

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(sources, "_hub_probes", {})
    resolve = socket.getaddrinfo

    def hanging_lookup(host, *args, **kwargs):
        if host == "huggingface.co":
            time.sleep(12)
            raise socket.gaierror("Temporary failure in name resolution")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging_lookup)
    open_page(app, "memory")
    app.segmented_control(key="memory_source").set_value("Hub id").run()
    start = time.perf_counter()
    app.text_input(key="memory_hub").set_value("some-org/a-model-not-in-the-cache").run()
    seconds = time.perf_counter() - start
    no_exceptions(app)
    errors = _errors(app)
    assert any("cannot reach the Hugging Face Hub" in error for error in errors), errors
    assert not any("Error" in error for error in errors), errors  # no exception class names
    assert seconds < 8, f"the page took {seconds:.1f} s to say the machine is offline"


def test_a_config_the_build_could_not_allocate_is_sized(app):
    """Every size within our limits, but a 4M × 131,072 embedding: built parameter by parameter on the CPU
    first (accelerate's init_empty_weights), it failed with the C++ allocator's message; on the meta
    device nothing is allocated."""
    fields = {
        "model_type": "llama",
        "hidden_size": 131_072,
        "intermediate_size": 1_048_576,
        "num_hidden_layers": 2,
        "num_attention_heads": 1024,
        "num_key_value_heads": 8,
        "vocab_size": 4_194_304,
    }
    open_page(app, "memory")
    app.segmented_control(key="memory_source").set_value("Upload config.json").run()
    app.file_uploader[0].upload("config.json", json.dumps(fields).encode(), "application/json").run()
    no_exceptions(app)
    assert not _errors(app), _errors(app)
    parameters = next(metric.value for metric in app.metric if metric.label == "Parameters")
    assert parameters.endswith(" B") and float(parameters[:-2].replace(",", "")) > 1_000  # > 1 T parameters
