"""Wire encoding of one approval rule (API.md §1.9)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_RULE_ERROR = "approval rule must be 'never', 'always', or {'kind': 'dynamic'}"


def approval_rule_to_wire(value: Any) -> dict[str, Any]:
    """``{"kind": "never"|"always"}`` or ``{"kind": "dynamic", "value": <predicate id>}``."""
    if value is None:
        raise ValueError("approval rule must not be null")
    if isinstance(value, str):
        if value in ("never", "always"):
            return {"kind": value}
        raise ValueError(_RULE_ERROR)
    if isinstance(value, Mapping):
        kind = value.get("kind")
        if kind in ("never", "always"):
            return {"kind": kind}
        if kind == "dynamic":
            predicate = value.get("value")
            if not isinstance(predicate, str) or not predicate:
                raise ValueError("dynamic approval rule requires a non-empty value")
            return {"kind": "dynamic", "value": predicate}
    raise ValueError(_RULE_ERROR)
