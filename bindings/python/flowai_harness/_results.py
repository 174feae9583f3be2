"""Python-side shaping of a tool handler's outcome (API.md §2.6).

The native dispatcher calls these after running a host handler, so that pydantic
dumping, the UI-channel keys and the exception text follow the contract in one place.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

__all__ = ["handler_error_json", "split_tool_result", "to_json_text"]

# Keys a handler may return for the UI channel; they are never part of the recorded result.
_FLOW_UI_KEY = "approvalDsl"
_SUMMARY_KEY = "displaySummary"
_CARD_KEY = "_cardEmitted"


def split_tool_result(value: Any) -> tuple[str, str | None, str | None]:
    """``(result_json, flow_ui_dsl, display_summary)`` for a handler's return value.

    ``approvalDsl`` becomes the ``data-flow-ui`` event's dsl (JSON-encoded when not a
    string); a string ``displaySummary`` becomes a ``text`` event; ``_cardEmitted`` is
    dropped. A value that is not JSON-serializable raises ``TypeError``.
    """
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    flow_ui: str | None = None
    summary: str | None = None
    if isinstance(value, dict):
        value = dict(value)
        if _FLOW_UI_KEY in value:
            dsl = value.pop(_FLOW_UI_KEY)
            flow_ui = dsl if isinstance(dsl, str) else json.dumps(dsl)
        if _SUMMARY_KEY in value:
            text = value.pop(_SUMMARY_KEY)
            summary = text if isinstance(text, str) else None
        value.pop(_CARD_KEY, None)
    return json.dumps(value), flow_ui, summary


def handler_error_json(error: BaseException) -> str:
    """The error result of a handler that raised: ``{"error": "<ExcType>: <message>"}``."""
    return json.dumps({"error": f"{type(error).__name__}: {error}"})


def _dump_model(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# What ``json.dumps(value, default=_dump_model, allow_nan=False)`` builds on every call:
# made once, it saves a third of a small result's encoding (the encoder keeps no state
# between calls, so threads may share it).
_ENCODER = json.JSONEncoder(default=_dump_model, allow_nan=False)


def to_json_text(value: Any) -> str:
    """JSON text of a callback's value; pydantic models (also nested) are model_dumped.

    The native runtime records this text; a value that is not JSON-serializable (or
    holds NaN/infinity) raises ``TypeError``/``ValueError``.
    """
    return _ENCODER.encode(value)
