"""The configuration every spec model shares (API.md §1.2)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

SPEC_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    frozen=True,
    extra="forbid",
)


class SpecModel(BaseModel):
    """Base of every wire model: camelCase aliases, snake_case input accepted, frozen, strict keys."""

    model_config = SPEC_CONFIG
