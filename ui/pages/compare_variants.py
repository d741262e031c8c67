"""The Compare page's variant choices: the catalog's quick recipes, the sidebar's scheme, and this session's
Methods-lab models while the server's memory budget still holds them; and how each is built for a run."""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st

from engine.methods import quantize_model
from engine.runtime.generation import GenerationError
from ui import state
from ui.cache.variants import model_key, variants
from ui.pages import compare as compare_view
from ui.pages import methods as methods_view


def variant_options(loaded) -> tuple[dict[str, compare_view.VariantSpec], dict]:
    """Option key -> VariantSpec (quick schemes and the Methods lab's models still held); lab configs ->
    their QuantizedModel, or why it is gone (freed under the server's memory budget) in words."""
    options = compare_view.quick_variants(loaded.model, state.scheme())
    lab: dict = {}
    for run in list(
        methods_view.runs().values()
    ):  # every model built on the Methods lab page from this model
        quantized, why = run.held()
        lab[run.config] = quantized if quantized is not None else why
        if quantized is None:
            st.caption(f"**{run.label}** (Methods lab) is not offered: {why}")
            continue
        options[f"lab:{run.label}"] = compare_view.VariantSpec(
            f"lab:{run.label}", f"{run.label} (Methods lab)", run.config
        )
    return options, lab


def builder(loaded, lab: dict) -> Callable:
    """`build(config, progress)` for the Compare job (`ui.pages.compare.prepare_models`, run in the job's
    thread, so it reads no session state and draws nothing): a Methods-lab model as the lab built it (never
    rebuilt here: GPTQ / AWQ need their calibration), otherwise the variant shared by every session
    (`ui.cache.variants`: the same registry and key as `variant()`, read here in the script thread)."""
    registry, reference_key = variants(), model_key()

    def build(config, progress: Callable[[float, str], None]):
        held = lab.get(config)
        if isinstance(held, str):
            raise GenerationError(held)
        if held is not None:
            return held
        create = lambda: quantize_model(loaded.model, config, progress=progress)  # noqa: E731
        return registry.get_or_create((reference_key, config), create)

    return build
