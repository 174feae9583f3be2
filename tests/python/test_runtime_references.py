"""References through the native runtime (API.md §6, §9.5)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pydantic
import pytest

from flowai_harness import (
    create_runtime,
    define_reference,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
    open_store,
)
from flowai_harness.errors import FlowAIValueError

PROVIDERS = {"anthropic": {"apiKey": "unused"}}


class Products(pydantic.BaseModel):
    skus: list[str]


glimpses: list[Any] = []


def product_glimpse(value: Any) -> dict[str, Any]:
    glimpses.append(value)
    return {"count": len(value.skus)}


PRODUCTS = define_reference("ProductSet", Products, glimpse=product_glimpse)
NOTES = define_reference("Note", {"text": str})


def spec(tenant: str = "acme", tools: tuple[Any, ...] = ()) -> Any:
    return define_runtime(
        define_tenant(tenant, "v1"),
        agents=[define_specialist("helper", model="claude-sonnet-4-6", prompt="h", tools=tools)],
        references=[PRODUCTS, NOTES],
        providers=PROVIDERS,
    )


def test_create_resolve_and_glimpse() -> None:
    glimpses.clear()
    runtime = create_runtime(spec())
    value = Products(skus=["a", "b", "c"])

    async def use() -> tuple[Any, ...]:
        created = await runtime.create_reference(PRODUCTS, value)
        again = await runtime.create_reference("ProductSet", {"skus": ["a", "b", "c"]}, glimpse={"explicit": True})
        note = await runtime.create_reference({"name": "Note"}, {"text": "hi"})
        return (
            created,
            again,
            note,
            await runtime.resolve_reference(created),
            await runtime.reference_glimpse({"kind": "ProductSet", "id": created["id"]}),
            await runtime.reference_glimpse(note),
        )

    created, again, note, resolved, glimpse, note_glimpse = asyncio.run(use())
    # The glimpse callback got the original pydantic value, once.
    assert glimpses == [value]
    assert created == {"kind": "ProductSet", "id": created["id"], "glimpse": {"count": 3}}
    assert len(created["id"]) == 32
    # Same value, kind and tenant: same id; re-creating overwrites the glimpse.
    assert again == {"kind": "ProductSet", "id": created["id"], "glimpse": {"explicit": True}}
    assert resolved == {"skus": ["a", "b", "c"]}
    assert glimpse == {"explicit": True}
    assert note["glimpse"] == {} and note_glimpse == {}
    runtime.close()


def test_reference_errors() -> None:
    runtime = create_runtime(spec())

    async def create(reference: Any, value: Any) -> Any:
        return await runtime.create_reference(reference, value)

    async def resolve(reference: Any) -> Any:
        return await runtime.resolve_reference(reference)

    with pytest.raises(ValueError, match="reference kind must not be empty"):
        asyncio.run(create("", {}))
    with pytest.raises(FlowAIValueError, match="unknown reference kind: Nope"):
        asyncio.run(create("Nope", {}))
    with pytest.raises(FlowAIValueError, match="schema validation failed for kind 'Note'"):
        asyncio.run(create("Note", {"text": 5}))
    with pytest.raises(ValueError, match="reference must provide string field 'kind'"):
        asyncio.run(resolve({"id": "x"}))
    with pytest.raises(ValueError, match="kind must not be empty"):
        asyncio.run(resolve({"kind": "", "id": "x"}))
    with pytest.raises(FlowAIValueError, match="reference not found: kind=Note id=missing"):
        asyncio.run(resolve({"kind": "Note", "id": "missing"}))
    with pytest.raises(ValueError, match="ReferenceSpec.glimpse must be callable or None"):

        class Odd:
            name = "Note"
            glimpse = 3

        asyncio.run(create(Odd(), {"text": "x"}))
    runtime.close()


def test_tenant_isolation_on_a_shared_store(tmp_path: Path) -> None:
    with open_store(tmp_path / "shared.redb") as store:
        acme = create_runtime(spec("acme"), store=store)
        globex = create_runtime(spec("globex"), store=store)

        async def use() -> tuple[Any, Any]:
            ref = await acme.create_reference("Note", {"text": "secret"})
            other = await globex.create_reference("Note", {"text": "secret"})
            return ref, other

        ref, other = asyncio.run(use())
        assert ref["id"] != other["id"]

        async def resolve_as_globex() -> Any:
            return await globex.resolve_reference(ref)

        with pytest.raises(FlowAIValueError, match="reference not found"):
            asyncio.run(resolve_as_globex())
        acme.close()
        globex.close()


def test_references_created_by_a_handler_are_journaled() -> None:
    @define_tool("save_note", {"text": str})
    async def save_note(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        ref = await ctx.references.create(NOTES, {"text": args["text"]}, glimpse={"len": len(args["text"])})
        value = await ctx.references.resolve(ref)
        glimpse = await ctx.references.glimpse(ref)
        return {"ref": ref, "value": value, "glimpse": glimpse}

    runtime = create_runtime(spec(tools=(save_note,)), interpreter="scripted")
    stream = runtime.run_specialist("helper", json.dumps({"tool": "save_note", "args": {"text": "hello"}}))

    async def consume() -> list[dict[str, Any]]:
        return [e async for e in stream]

    events = asyncio.run(consume())
    result = next(e for e in events if e["type"] == "tool-invocation" and e["state"] == "result")["result"]
    ref = result["ref"]
    assert result == {"ref": {"kind": "Note", "id": ref["id"], "glimpse": {"len": 5}}, "value": {"text": "hello"}, "glimpse": {"len": 5}}
    journal = runtime.journal(stream.run_id)
    created = [j["data"] for j in journal if j["kind"] == "ReferenceCreated"]
    assert created == [{"kind": "Note", "id": ref["id"]}]
    kinds = [j["kind"] for j in journal]
    assert kinds.index("ReferenceCreated") < kinds.index("ToolCallCompleted")
    runtime.close()


def test_gc_counts_removed_entries() -> None:
    runtime = create_runtime(spec())
    assert runtime.gc() == 0
    runtime.close()
