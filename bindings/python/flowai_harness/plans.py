"""Plan specs (API.md §1.5).

A plan spec's ``schema`` validates the whole planner body, which must carry a
top-level ``actions`` array; the runtime flattens those actions for the dispatcher.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args

from pydantic import Field, field_validator

from ._model import SpecModel
from ._schema import normalize_schema

__all__ = ["PlanDisplayAlias", "PlanSpec", "PlanStatus", "define_plan"]

PlanStatus = Literal["draft", "approved", "executing", "executed", "failed"]

_STATUSES: frozenset[str] = frozenset(get_args(PlanStatus))


def _check_status(status: Any) -> None:
    if status not in _STATUSES:
        raise ValueError(
            f"unsupported plan display status `{status}`; expected one of {sorted(_STATUSES)}"
        )


class PlanDisplayAlias(SpecModel):
    """A UI label for one stored plan status."""

    status: PlanStatus
    alias: str


class PlanSpec(SpecModel):
    """A named plan kind whose body schema the planner's output must satisfy."""

    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    display_aliases: list[PlanDisplayAlias] = Field(default_factory=list)

    @field_validator("schema_", mode="before")
    @classmethod
    def _normalize_schema(cls, value: Any) -> dict[str, Any]:
        return normalize_schema(value)

    @field_validator("display_aliases", mode="before")
    @classmethod
    def _normalize_display_aliases(cls, value: Any) -> Any:
        if value is None:
            return []
        if isinstance(value, Mapping):
            aliases = []
            for status, alias in value.items():
                _check_status(status)
                aliases.append({"status": status, "alias": alias})
            return aliases
        if isinstance(value, Iterable) and not isinstance(value, (str, bytes)):
            items = list(value)
            for item in items:
                if isinstance(item, Mapping) and "status" in item:
                    _check_status(item["status"])
            return items
        # Anything else is left to pydantic, whose list error names the field.
        return value


def define_plan(name: str, schema: Any, display_aliases: Any = ()) -> PlanSpec:
    """Declare a plan kind: its name, its body schema and optional status labels."""
    return PlanSpec(name=name, schema=schema, display_aliases=display_aliases)
