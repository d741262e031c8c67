"""The Memory page's checkpoint recipes under AppTest: a tiny script calling the picker and the table."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.app.conftest import no_exceptions


def _recipes_script():
    from engine.quant.schemes import QuantScheme
    from engine.sizing.catalog import catalog_model
    from ui.pages.memory_recipes import recipe_picker, recipe_table

    slug = "gpt-oss-20b"
    config = catalog_model(slug).config()
    recipe = recipe_picker(config, QuantScheme.from_label("int4 g128"))
    if recipe is not None:
        recipe_table(config, recipe, slug)


def test_recipe_picker_and_table():
    app = AppTest.from_function(_recipes_script, default_timeout=60).run()
    no_exceptions(app)
    assert not app.dataframe  # one format for the whole model: the page's usual path
    app.selectbox(key="memory_recipe_choice").set_value("gpt-oss").run()
    no_exceptions(app)
    table = app.dataframe[0].value
    assert list(table["part"]) == [
        "embeddings",
        "attention",
        "routed experts",
        "routers",
        "output head",
        "norms",
        "total",
    ]
    assert "published 12.80 GiB" in " ".join(caption.value for caption in app.caption)
    app.selectbox(key="memory_recipe_choice").set_value("Custom: a format per module kind").run()
    no_exceptions(app)
    assert app.selectbox(key="memory_recipe_kind_routed_experts").value == "int4 g128"  # the sidebar's
    assert app.selectbox(key="memory_recipe_kind_embeddings").value == "bf16"
    app.selectbox(key="memory_recipe_kind_routed_experts").set_value("mxfp4").run()
    no_exceptions(app)
    table = app.dataframe[0].value
    assert table.loc[table["part"] == "routed experts", "bits/weight"].item() > 4.25  # biases stay bf16
    assert table.loc[table["part"] == "attention", "format"].item() == "int4 g128 (your scheme)"
