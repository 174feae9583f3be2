"""A small JSON-friendly preview of a value (API.md §1.7)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from decimal import Decimal
from typing import Any

__all__ = ["glimpse"]


def glimpse(value: Any, *, max_items: int = 3) -> dict[str, Any]:
    """Summarize ``value``: mappings as themselves, sequences as count + sample, scalars as value."""
    if max_items < 0:
        raise ValueError("max_items must be non-negative")
    converted = _jsonable(value)
    if isinstance(converted, dict):
        return converted
    if isinstance(converted, list):
        return {"count": len(converted), "sample": converted[:max_items]}
    return {"value": converted}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, bytes)):
        return value
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return _jsonable(dump(mode="json"))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    if isinstance(value, Iterable):
        return [_jsonable(item) for item in value]
    return value
