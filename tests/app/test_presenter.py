"""Presenter mode and the guided tour (issue 21) through the real app: the link turns presenter mode on and
its style hides the sidebar and the page's settings; `tour=N` shows step N's narration on its page, Next
opens the next step's page with its selections; a step the tour lacks is ignored with a message."""

from __future__ import annotations

import pytest

from tests.app.conftest import no_exceptions
from ui import presenter, tour
from ui.link_params import PAGE_PARAMS, SHARED


def css(app) -> str:
    return "\n".join(element.proto.body for element in app.html)


def banner_text(app) -> str:
    return "\n".join(element.value for element in app.markdown if element.value.startswith("**Step "))


def test_every_step_names_parameters_its_page_declares():
    for number, step in enumerate(tour.STEPS, start=1):
        title = tour.PAGE_TITLES[step.page]
        declared = {param.key for param in PAGE_PARAMS[title]} | set(SHARED)
        assert set(step.params) <= declared, (number, title, set(step.params) - declared)
        assert tour.step_params(number, present=True)[tour.TOUR_PARAM] == str(number)
    assert len(tour.STEPS) == 10


def test_presenter_mode_from_the_link_and_back(app):
    app.query_params["present"] = "1"
    app.run()
    no_exceptions(app)
    assert app.toggle(key=presenter.PRESENT).value is True
    assert 'section[data-testid="stSidebar"]' in css(app)

    app.button(key="qe_present_exit").click().run()  # the sidebar is hidden: the way out is on the page
    no_exceptions(app)
    assert app.toggle(key=presenter.PRESENT).value is False
    assert 'section[data-testid="stSidebar"]' not in css(app)
    assert "present" not in app.query_params


def test_presenter_css_hides_the_pages_settings():
    rules = presenter.presenter_css("Outliers")
    assert ".st-key-outliers_windows" in rules and ".st-key-outliers_collect" not in rules
    assert ".st-key-" not in presenter.presenter_css("Overview")


def test_the_tour_opens_its_first_step_and_next_goes_on(app):
    app.query_params.update({"tour": "1", "present": "1"})  # the start link, on the Overview page
    app.run()
    no_exceptions(app)
    first = tour.step(1)
    assert first.narration in banner_text(app)
    assert "Step 1 of 10" in banner_text(app)
    assert app.selectbox(key="grid_layer").value == "layer 11"
    assert app.selectbox(key="grid_weight").value.name == "model.layers.11.mlp.down_proj.weight"
    assert ".st-key-grid_source" in css(app)  # presenter mode came along

    app.button(key="qe_tour_next").click().run()
    no_exceptions(app)
    assert tour.step(2).narration in banner_text(app)
    assert app.session_state["grid_source"] == "Synthetic"
    assert app.toggle(key=presenter.PRESENT).value is True

    app.button(key="qe_tour_next").click().run()  # another page: presenter mode outlives the page change
    no_exceptions(app)
    assert tour.step(3).narration in banner_text(app)
    assert app.toggle(key=presenter.PRESENT).value is True
    assert app.query_params["present"] == "1" and app.query_params["tour"] == "3"

    app.button(key="qe_tour_end").click().run()
    no_exceptions(app)
    assert banner_text(app) == ""
    assert "tour" not in app.query_params


@pytest.mark.parametrize("value", ["99", "0", "two"])
def test_a_step_the_tour_lacks_is_ignored_with_a_message(app, value):
    app.query_params["tour"] = value
    app.run()
    no_exceptions(app)
    assert banner_text(app) == ""
    assert any("tour" in warning.value for warning in app.warning), [w.value for w in app.warning]
