"""Sessions side by side in one process (issue 9): three AppTest sessions run different pages and schemes
at the same time; the shared cached model is never mutated (checksum before and after)."""

from __future__ import annotations

import threading

from streamlit.testing.v1 import AppTest

from engine.models.sources import ModelSource
from tests.app.conftest import ROOT, TIMEOUT, no_exceptions
from tests.conftest import checksum


def session(page: str) -> AppTest:
    app = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    app.run()
    app.switch_page(f"pages/{page}.py")
    app.run()
    return app


def evaluate_w8(app: AppTest) -> None:
    app.selectbox(key="evaluate_grid").set_value("Pick cells").run()
    app.multiselect(key="evaluate_cells").set_value(["W4", "KV4"]).run()
    app.number_input(key="evaluate_windows").set_value(1).run()
    app.select_slider(key="evaluate_window").set_value(128).run()
    app.button(key="evaluate_run").click().run()
    assert app.session_state["evaluate_grid_job"].wait(600)  # the grid runs as a background job
    app.run()


def grid_int8(app: AppTest) -> None:
    app.select_slider(key="qe_scheme_bits").set_value(8).run()
    app.radio(key="qe_scheme_granularity").set_value("channel").run()


def memory_loaded(app: AppTest) -> None:
    app.segmented_control(key="memory_source").set_value("Loaded model").run()


def test_three_sessions_share_the_model_without_mutating_it():
    from ui import cache

    first = session("overview")  # loads the default model into the shared registry
    no_exceptions(first)
    model = cache.models().get((ModelSource(), "cpu", "float32")).model
    before = checksum(model)

    apps = {"evaluate": session("evaluate"), "grid": session("grid"), "memory": session("memory")}
    actions = {"evaluate": evaluate_w8, "grid": grid_int8, "memory": memory_loaded}
    errors: list[BaseException] = []

    def drive(name: str) -> None:
        try:
            actions[name](apps[name])
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=drive, args=(name,)) for name in apps]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert not errors, errors
    for app in apps.values():
        no_exceptions(app)
    assert list(apps["evaluate"].dataframe[0].value["cell"]) == ["W16 / KV16", "W4", "KV4"]
    assert {m.label for m in apps["memory"].metric} >= {"Weights, real bytes", "Difference"}
    assert any(m.label == "Bits per weight" and m.value.startswith("8.") for m in apps["grid"].metric)
    assert checksum(model) == before
