"""A catalog of published model configs, as data, for memory sizing without weights.

Each model is one JSON file in `assets/catalog/models/<slug>.json`: display name, Hub id, family, the
published total parameter count (with where it comes from), a sentence on what matters for memory, and
the model's `config.json` fields as published (minus `auto_map` and `quantization_config`). Configs are
built with transformers' native classes only: no remote code, no network.

A published figure that is rounded ("8.2B", "51.6B") carries `published_precision`, the rounding unit in
parameters (0.1B = 100,000,000): the exact count is within half a unit of it. Exact figures (an index's
total_size, a model card's table) leave it out.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

CATALOG_DIR = Path(__file__).resolve().parents[2] / "assets" / "catalog" / "models"
FIELDS = ("name", "hub_id", "family", "published_parameters", "parameters_source", "notes", "config")
OPTIONAL_FIELDS = ("published_precision",)  # goes right after published_parameters
FIELD_ORDER = FIELDS[:4] + OPTIONAL_FIELDS + FIELDS[4:]


@dataclass(frozen=True)
class CatalogModel:
    slug: str
    name: str
    hub_id: str
    family: str
    published_parameters: int
    parameters_source: str
    notes: str
    config_dict: dict = field(compare=False, hash=False, repr=False)
    published_precision: int | None = None  # rounding unit of a rounded published figure, in parameters

    @property
    def published_margin(self) -> float:
        """How far the exact count may be from the published figure by rounding alone (0 for an exact one)."""
        return self.published_precision / 2 if self.published_precision else 0.0

    @property
    def model_type(self) -> str:
        return self.config_dict["model_type"]

    def config(self):
        """A fresh transformers config (PretrainedConfig) from the published fields; nothing is downloaded."""
        from transformers import AutoConfig

        fields = copy.deepcopy(self.config_dict)  # config classes may keep (and mutate) nested dicts
        return AutoConfig.for_model(fields.pop("model_type"), **fields)


def _load(path: Path) -> CatalogModel:
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name}: expected a JSON object")
    missing = [name for name in FIELDS if name not in data]
    if missing:
        raise ValueError(f"{path.name}: missing {', '.join(missing)}")
    unknown = [name for name in data if name not in FIELD_ORDER]
    if unknown:
        raise ValueError(f"{path.name}: unknown field {', '.join(unknown)}")
    config = data["config"]
    if not isinstance(config, dict) or not isinstance(config.get("model_type"), str):
        raise ValueError(f"{path.name}: config must be an object with a model_type")
    if "auto_map" in config:
        raise ValueError(f"{path.name}: auto_map (remote code) is not allowed in the catalog")
    published = data["published_parameters"]
    if isinstance(published, bool) or not isinstance(published, int) or published <= 0:
        raise ValueError(f"{path.name}: published_parameters must be a positive integer")
    precision = data.get("published_precision")
    if precision is not None and (
        isinstance(precision, bool) or not isinstance(precision, int) or not 0 < precision < published
    ):
        raise ValueError(
            f"{path.name}: published_precision must be a positive integer below the published figure"
        )
    return CatalogModel(
        slug=path.stem,
        name=str(data["name"]),
        hub_id=str(data["hub_id"]),
        family=str(data["family"]),
        published_parameters=published,
        parameters_source=str(data["parameters_source"]),
        notes=str(data["notes"]),
        config_dict=config,
        published_precision=precision,
    )


@functools.lru_cache(maxsize=1)
def _catalog() -> tuple[CatalogModel, ...]:
    models = [_load(path) for path in CATALOG_DIR.glob("*.json")]
    return tuple(sorted(models, key=lambda m: (m.family.lower(), m.published_parameters, m.slug)))


def catalog_models() -> list[CatalogModel]:
    """Every catalog model, sorted by family then size (files are read once; the list is a fresh copy)."""
    return list(_catalog())


def catalog_model(name_or_slug: str) -> CatalogModel:
    """A model by slug, display name or Hub id (case-insensitive); KeyError naming close matches if unknown."""
    wanted = name_or_slug.strip().lower()
    models = _catalog()
    for model in models:
        if wanted in (model.slug.lower(), model.name.lower(), model.hub_id.lower()):
            return model
    choices = {key.lower(): model.slug for model in models for key in (model.slug, model.name)}
    close = dict.fromkeys(choices[key] for key in difflib.get_close_matches(wanted, choices, n=4, cutoff=0.5))
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(m.slug for m in models)}"
    raise KeyError(f"No catalog model {name_or_slug!r}{hint}")
