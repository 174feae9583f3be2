"""Host tool specs (API.md §1.8)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ConfigDict, Field, field_validator, model_validator

from ._model import SPEC_CONFIG, SpecModel
from ._schema import normalize_schema

__all__ = ["ToolSpec", "define_tool"]

_APPROVAL_ERROR = "approval must be 'never', 'always', or a callable dynamic policy"


class ToolSpec(SpecModel):
    """A host tool: name, description, input schema, approval rule, and (once bound) its handler.

    ``handler(args, ctx)`` may be sync or ``async def``. A callable ``approval`` becomes a
    dynamic rule whose predicate id is ``binding_id`` or ``"<name>_approval"``.
    """

    model_config = ConfigDict(**SPEC_CONFIG, arbitrary_types_allowed=True)

    name: str
    description: str = ""
    input_schema: dict[str, Any]
    approval: dict[str, Any] = Field(default_factory=lambda: {"kind": "never"})
    output_schema: dict[str, Any] | None = None
    binding_id: str | None = None
    handler: Callable[..., Any] | None = Field(default=None, exclude=True)
    approval_handler: Callable[..., Any] | None = Field(default=None, exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _normalize_approval(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        approval = data.get("approval", "never")
        if callable(approval):
            name = data.get("name")
            if not isinstance(name, str) or not name:
                raise ValueError("approval callable requires a non-empty tool name")
            binding_id = _first_present(data, "binding_id", "bindingId")
            data["approval"] = {
                "kind": "dynamic",
                "value": binding_id if binding_id else f"{name}_approval",
            }
            if _first_present(data, "approval_handler", "approvalHandler") is None:
                data.pop("approvalHandler", None)
                data["approval_handler"] = approval
        else:
            data["approval"] = _tool_approval_to_wire(approval)
        return data

    @field_validator("input_schema", mode="before")
    @classmethod
    def _normalize_input_schema(cls, value: Any) -> dict[str, Any]:
        return normalize_schema(value)

    @field_validator("output_schema", mode="before")
    @classmethod
    def _normalize_output_schema(cls, value: Any) -> dict[str, Any] | None:
        return None if value is None else normalize_schema(value)

    @property
    def binding_key(self) -> str:
        """The key the runtime binds this tool under: ``binding_id`` or ``name``."""
        return self.binding_id or self.name

    def bind(self, handler: Callable[..., Any]) -> ToolSpec:
        """A copy of this spec with ``handler`` attached (fields and approval handler kept)."""
        if not callable(handler):
            raise TypeError("tool handler must be callable")
        return self.model_copy(update={"handler": handler})

    def __call__(self, handler: Callable[..., Any]) -> ToolSpec:
        """Decorator form of :meth:`bind`: ``@define_tool(...)`` over a function yields a ToolSpec."""
        return self.bind(handler)


def _first_present(data: Mapping[str, Any], *keys: str) -> Any:
    for key in keys:
        if data.get(key) is not None:
            return data[key]
    return None


def _tool_approval_to_wire(approval: Any) -> dict[str, Any]:
    if isinstance(approval, str):
        if approval in ("never", "always"):
            return {"kind": approval}
        raise ValueError(_APPROVAL_ERROR)
    if isinstance(approval, Mapping):
        kind = approval.get("kind")
        if kind in ("never", "always"):
            return {"kind": kind}
        if kind == "dynamic":
            value = approval.get("value")
            if not isinstance(value, str) or not value:
                raise ValueError("approval dynamic value must be a non-empty binding id")
            return {"kind": "dynamic", "value": value}
    raise ValueError(_APPROVAL_ERROR)


def define_tool(
    name: str,
    input_schema: Any,
    description: str = "",
    approval: Any = "never",
    output_schema: Any = None,
    binding_id: str | None = None,
) -> ToolSpec:
    """Declare a host tool; use the result as a decorator (or ``.bind``) to attach its handler."""
    return ToolSpec(
        name=name,
        input_schema=input_schema,
        description=description,
        approval=approval,
        output_schema=output_schema,
        binding_id=binding_id,
    )
