from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flowai_harness import ToolSpec, define_tool


def search(args: dict[str, Any], ctx: Any) -> list[str]:
    return []


def test_exact_dump() -> None:
    tool = define_tool("search_products", {"query": str, "limit": int}, "Search products")
    assert tool.model_dump(by_alias=True, mode="json") == {
        "name": "search_products",
        "description": "Search products",
        "inputSchema": {
            "type": "object",
            "properties": {"query": {"type": "string"}, "limit": {"type": "integer"}},
            "required": ["query", "limit"],
        },
        "approval": {"kind": "never"},
        "outputSchema": None,
        "bindingId": None,
    }


def test_positional_order_of_define_tool() -> None:
    tool = define_tool("t", {"q": str}, "d", "always", {"r": int}, "bind-1")
    assert tool.description == "d"
    assert tool.approval == {"kind": "always"}
    assert tool.output_schema == {"type": "object", "properties": {"r": {"type": "integer"}}, "required": ["r"]}
    assert tool.binding_id == "bind-1"


def test_missing_approval_means_never() -> None:
    assert ToolSpec(name="t", input_schema={}).approval == {"kind": "never"}
    assert ToolSpec.model_validate({"name": "t", "inputSchema": {}}).approval == {"kind": "never"}


@pytest.mark.parametrize(
    ("approval", "wire"),
    [
        ("never", {"kind": "never"}),
        ("always", {"kind": "always"}),
        ({"kind": "always", "extra": 1}, {"kind": "always"}),
        ({"kind": "never"}, {"kind": "never"}),
        ({"kind": "dynamic", "value": "pred"}, {"kind": "dynamic", "value": "pred"}),
    ],
)
def test_approval_normalization(approval: Any, wire: dict[str, Any]) -> None:
    assert define_tool("t", {}, approval=approval).approval == wire


def test_callable_approval_becomes_dynamic() -> None:
    def needs_approval(args: Any, ctx: Any) -> bool:
        return True

    tool = define_tool("refund", {"amount": float}, approval=needs_approval)
    assert tool.approval == {"kind": "dynamic", "value": "refund_approval"}
    assert tool.approval_handler is needs_approval
    assert "approvalHandler" not in tool.model_dump(by_alias=True)

    bound = define_tool("refund", {}, approval=needs_approval, binding_id="refund-v2")
    assert bound.approval == {"kind": "dynamic", "value": "refund-v2"}


def test_explicit_approval_handler_wins() -> None:
    def first(args: Any, ctx: Any) -> bool:
        return True

    def second(args: Any, ctx: Any) -> bool:
        return False

    tool = ToolSpec(name="t", input_schema={}, approval=first, approval_handler=second)
    assert tool.approval_handler is second


def test_callable_approval_needs_a_name() -> None:
    with pytest.raises(ValidationError, match="approval callable requires a non-empty tool name"):
        define_tool("", {}, approval=lambda a, c: True)


@pytest.mark.parametrize("approval", ["sometimes", 3, None, {"kind": "maybe"}, {"value": "x"}])
def test_bad_approval(approval: Any) -> None:
    with pytest.raises(ValidationError) as info:
        define_tool("t", {}, approval=approval)
    assert "approval must be 'never', 'always', or a callable dynamic policy" in str(info.value)


@pytest.mark.parametrize("value", [None, "", 3])
def test_bad_dynamic_value(value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        define_tool("t", {}, approval={"kind": "dynamic", "value": value})
    assert "approval dynamic value must be a non-empty binding id" in str(info.value)
    assert "approval" in str(info.value)


def test_bind_returns_new_spec_with_handler() -> None:
    def judge(args: Any, ctx: Any) -> bool:
        return False

    tool = define_tool("t", {"q": str}, approval=judge)
    bound = tool.bind(search)
    assert isinstance(bound, ToolSpec)
    assert bound is not tool
    assert tool.handler is None
    assert bound.handler is search
    assert bound.approval_handler is judge
    assert bound.model_dump(by_alias=True) == tool.model_dump(by_alias=True)


def test_decorator_yields_tool_spec() -> None:
    @define_tool("lookup", {"sku": str}, "Look up a product")
    def lookup(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"sku": args["sku"]}

    assert isinstance(lookup, ToolSpec)
    assert lookup.handler is not None
    assert lookup.handler({"sku": "a"}, None) == {"sku": "a"}


def test_async_handler_accepted() -> None:
    async def handler(args: Any, ctx: Any) -> None:
        return None

    assert define_tool("t", {})(handler).handler is handler


def test_binding_key() -> None:
    assert define_tool("t", {}).binding_key == "t"
    assert define_tool("t", {}, binding_id="b").binding_key == "b"


def test_round_trip_and_frozen() -> None:
    tool = define_tool("t", {"q": str}, approval={"kind": "dynamic", "value": "p"}, output_schema={"type": "object"})
    dumped = tool.model_dump(by_alias=True, mode="json")
    assert ToolSpec.model_validate(dumped).model_dump(by_alias=True, mode="json") == dumped
    with pytest.raises(ValidationError):
        tool.name = "u"  # type: ignore[misc]
