"""Reference specs (API.md §1.6): typed, tenant-scoped values addressed by kind and id."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import ConfigDict, Field, field_validator

from ._model import SPEC_CONFIG, SpecModel
from ._schema import normalize_schema

__all__ = ["ReferenceSpec", "define_reference"]


class ReferenceSpec(SpecModel):
    """A reference kind: its value schema, optional time to live, optional glimpse callback."""

    model_config = ConfigDict(**SPEC_CONFIG, arbitrary_types_allowed=True)

    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    ttl_ms: int | None = Field(default=None, ge=0)
    # Customer code computing a small preview of a value; Python-only, never on the wire.
    glimpse: Callable[[Any], Any] | None = Field(default=None, exclude=True)

    @field_validator("schema_", mode="before")
    @classmethod
    def _normalize_schema(cls, value: Any) -> dict[str, Any]:
        return normalize_schema(value)


def define_reference(
    name: str,
    schema: Any,
    ttl_ms: int | None = None,
    glimpse: Callable[[Any], Any] | None = None,
) -> ReferenceSpec:
    """Declare a reference kind."""
    # Snake_case keywords on purpose: validation errors then name `ttl_ms`, as callers expect.
    return ReferenceSpec(name=name, schema=schema, ttl_ms=ttl_ms, glimpse=glimpse)
