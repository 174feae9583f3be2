"""Python-side argument handling of the runtime's reference methods (API.md §6).

``PyRuntime.create_reference`` / ``resolve_reference`` / ``reference_glimpse`` receive
arbitrary Python objects (kind strings, ``ReferenceSpec``s, pydantic values, glimpse
callbacks). Turning them into JSON text is Python work, so the native methods call
these two functions and deal only with strings afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["prepare_reference_create", "reference_handle"]


def prepare_reference_create(reference: Any, value: Any, glimpse: Any = None) -> tuple[str, str, str]:
    """``(kind, value_json, glimpse_json)`` for ``create_reference(reference, value, glimpse)``.

    The glimpse is the explicit ``glimpse`` if given, else the reference spec's
    ``glimpse`` callback applied once to the original value, else ``{}``. Exceptions
    raised by that callback propagate unchanged.
    """
    kind = _reference_kind(reference)
    if glimpse is None and not isinstance(reference, str):
        callback = getattr(reference, "glimpse", None)
        if callback is not None:
            if not callable(callback):
                raise ValueError("ReferenceSpec.glimpse must be callable or None")
            glimpse = callback(value)
    if glimpse is None:
        glimpse = {}
    return kind, _json_text(value), _json_text(glimpse)


def reference_handle(reference: Any) -> tuple[str, str]:
    """``(kind, id)`` of a reference handle given as a mapping or an object."""
    return _handle_field(reference, "kind"), _handle_field(reference, "id")


def _reference_kind(reference: Any) -> str:
    kind: Any
    if isinstance(reference, str):
        kind = reference
    elif isinstance(reference, Mapping):
        kind = reference.get("name")
    else:
        kind = getattr(reference, "name", None)
    if not isinstance(kind, str):
        raise ValueError("reference must be a kind string or an object with a string `name`")
    if not kind:
        raise ValueError("reference kind must not be empty")
    return kind


def _json_text(value: Any) -> str:
    if isinstance(value, BaseModel):
        return json.dumps(value.model_dump(mode="json"))
    return json.dumps(value)


def _handle_field(reference: Any, field: str) -> str:
    if isinstance(reference, Mapping):
        text = reference.get(field)
    else:
        text = getattr(reference, field, None)
    if not isinstance(text, str):
        raise ValueError(f"reference must provide string field '{field}'")
    if not text:
        raise ValueError(f"{field} must not be empty")
    return text
