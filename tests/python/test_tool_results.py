"""Shaping of tool handler outcomes (API.md §2.6)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, Field

from flowai_harness._results import handler_error_json, split_tool_result


class Found(BaseModel):
    product_ids: list[str] = Field(alias="productIds")


def test_plain_values() -> None:
    assert split_tool_result([1, "a"]) == ('[1, "a"]', None, None)
    assert split_tool_result(None) == ("null", None, None)
    assert split_tool_result({"ok": True}) == ('{"ok": true}', None, None)


def test_pydantic_result_is_dumped() -> None:
    result, _, _ = split_tool_result(Found(productIds=["p"]))
    assert json.loads(result) == {"product_ids": ["p"]}


def test_ui_channel_keys_removed() -> None:
    original = {"rows": 2, "approvalDsl": "card {}", "displaySummary": "2 rows", "_cardEmitted": True}
    assert split_tool_result(original) == ('{"rows": 2}', "card {}", "2 rows")
    assert "approvalDsl" in original  # the handler's own dict is not mutated


def test_non_string_ui_values() -> None:
    result, dsl, summary = split_tool_result({"approvalDsl": {"card": [1]}, "displaySummary": 3})
    assert (result, dsl, summary) == ("{}", '{"card": [1]}', None)


def test_unserializable_result() -> None:
    with pytest.raises(TypeError):
        split_tool_result({"x": object()})


def test_handler_error() -> None:
    assert json.loads(handler_error_json(KeyError("sku"))) == {"error": "KeyError: 'sku'"}
    assert json.loads(handler_error_json(ValueError("bad input"))) == {"error": "ValueError: bad input"}
