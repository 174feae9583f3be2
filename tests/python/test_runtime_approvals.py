"""Approvals, plans and the action dispatcher through the native runtime
(API.md §2.4, §3.2, §5.5, §5.6, §7)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pydantic
import pytest

from flowai_harness import (
    ApprovalPolicies,
    create_runtime,
    define_coordinator,
    define_executor,
    define_plan,
    define_planner,
    define_reference,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
)
from flowai_harness.context import DispatchContext
from flowai_harness.errors import FlowAIValueError

PROVIDERS = {"anthropic": {"apiKey": "unused"}}


def tool_spec(*tools: Any) -> Any:
    return define_runtime(
        define_tenant("acme", "v1"),
        agents=[
            define_coordinator("coordinator", model="claude-sonnet-4-6", prompt="c", routes=["helper"], tools=tools),
            define_specialist("helper", model="claude-sonnet-4-6", prompt="h"),
        ],
        providers=PROVIDERS,
    )


def one_call(name: str, args: Any) -> str:
    return json.dumps({"tool": name, "args": args})


async def answer_inside_loop(runtime: Any, stream: Any, outcome: str, before: Any = None, **kwargs: Any) -> list[dict[str, Any]]:
    """The §2.4 snippet: answer each approval from inside the consuming loop."""
    events = []
    async for event in stream:
        events.append(event)
        if event["type"] == "approval-required":
            if before is not None:
                before(event)
            await runtime.respond_to_approval(event["data"]["id"], outcome, **kwargs)
    return events


def test_tool_gate_approve_from_inside_the_loop() -> None:
    calls: list[Any] = []

    @define_tool("send_email", {"to": str}, approval="always")
    def send_email(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls.append(args)
        return {"sent": True}

    runtime = create_runtime(tool_spec(send_email), interpreter="scripted")
    stream = runtime.query(one_call("send_email", {"to": "a@b.c"}), "t1")
    pending: list[Any] = []

    def before(event: dict[str, Any]) -> None:
        # Pending (journaled) before the event; the handler has not run.
        assert calls == []
        pending.append(runtime.run(stream.run_id)["pendingApprovals"])

    events = asyncio.run(answer_inside_loop(runtime, stream, "approve", before))
    kinds = [e["type"] + ("/" + e["state"] if "state" in e and e["type"] == "tool-invocation" else "") for e in events]
    assert kinds[2:6] == ["tool-invocation/call", "approval-required", "approval-decision", "tool-invocation/result"]
    required = events[3]["data"]
    assert pending == [[required["id"]]]
    assert required == {
        "id": required["id"],
        "kind": "tool",
        "target": "send_email",
        "payload": {"to": "a@b.c"},
        "resourceId": "acme",
        "threadId": "t1",
        "correlationId": "scripted-tool-1",
    }
    assert events[4] == {"type": "approval-decision", "data": {"id": required["id"], "outcome": {"outcome": "approve"}}}
    assert events[5]["result"] == {"sent": True}
    assert calls == [{"to": "a@b.c"}]
    assert runtime.run(stream.run_id)["status"] == "completed"
    runtime.close()


def test_tool_gate_reject_and_revise_never_run_the_handler() -> None:
    calls: list[Any] = []

    @define_tool("drop_table", {}, approval="always")
    def drop_table(args: dict[str, Any], ctx: Any) -> str:
        calls.append(args)
        return "dropped"

    runtime = create_runtime(tool_spec(drop_table), interpreter="scripted")
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(one_call("drop_table", {}), "t1"), "reject", feedback="too risky"))
    decision = next(e for e in events if e["type"] == "approval-decision")
    assert decision["data"]["outcome"] == {"outcome": "reject"} and decision["data"]["feedback"] == "too risky"
    result = next(e for e in events if e["type"] == "tool-invocation" and e["state"] == "result")["result"]
    assert result == {"error": "approval_rejected", "rejected": True, "reason": "too risky", "do_not_retry": True}
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(one_call("drop_table", {}), "t1"), "revise"))
    result = next(e for e in events if e["type"] == "tool-invocation" and e["state"] == "result")["result"]
    assert result == {"error": "approval_rejected", "rejected": True, "reason": "Approval rejected", "do_not_retry": True}
    assert calls == []
    runtime.close()


def test_respond_to_approval_errors() -> None:
    @define_tool("gated", {}, approval="always")
    def gated(args: dict[str, Any], ctx: Any) -> str:
        return "ok"

    runtime = create_runtime(tool_spec(gated), interpreter="scripted")
    with pytest.raises(ValueError, match="approval outcome must be approve, reject, or revise; got maybe"):
        runtime.respond_to_approval("any", "maybe")

    async def unknown() -> None:
        await runtime.respond_to_approval("no-such-approval", "approve")

    with pytest.raises(FlowAIValueError, match="approval not found: no-such-approval"):
        asyncio.run(unknown())

    async def twice() -> str:
        async for event in runtime.query(one_call("gated", {}), "t1"):
            if event["type"] == "approval-required":
                approval_id: str = event["data"]["id"]
                await runtime.respond_to_approval(approval_id, "approve")
                with pytest.raises(ValueError, match=f"approval already resolved: {approval_id}"):
                    await runtime.respond_to_approval(approval_id, "reject")
        return "done"

    assert asyncio.run(twice()) == "done"
    runtime.close()


def test_dynamic_predicate_called_once_with_its_context() -> None:
    predicate_calls: list[tuple[Any, Any]] = []
    handler_calls: list[Any] = []

    def needs_approval(args: dict[str, Any], ctx: dict[str, Any]) -> bool:
        predicate_calls.append((args, ctx))
        return bool(args["amount"] > 100)

    @define_tool("refund", {"amount": int}, approval=needs_approval)
    def refund(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        handler_calls.append(args)
        return {"refunded": args["amount"]}

    runtime = create_runtime(tool_spec(refund), interpreter="scripted")
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(one_call("refund", {"amount": 5}), "t1"), "approve"))
    assert not [e for e in events if e["type"] == "approval-required"]
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(one_call("refund", {"amount": 500}), "t1"), "approve"))
    assert len([e for e in events if e["type"] == "approval-required"]) == 1
    assert predicate_calls == [
        ({"amount": 5}, {"kind": "tool", "target": "refund", "tenant": "acme"}),
        ({"amount": 500}, {"kind": "tool", "target": "refund", "tenant": "acme"}),
    ]
    assert handler_calls == [{"amount": 5}, {"amount": 500}]
    runtime.close()


def test_failing_or_non_bool_predicate_requires_approval(capfd: pytest.CaptureFixture[str]) -> None:
    def broken(args: Any, ctx: Any) -> bool:
        raise RuntimeError("predicate exploded")

    def vague(args: Any, ctx: Any) -> Any:
        return "yes"

    @define_tool("a", {}, approval={"kind": "dynamic", "value": "broken"})
    def a(args: dict[str, Any], ctx: Any) -> str:
        return "a"

    @define_tool("b", {}, approval={"kind": "dynamic", "value": "vague"})
    def b(args: dict[str, Any], ctx: Any) -> str:
        return "b"

    runtime = create_runtime(tool_spec(a, b), interpreter="scripted", approval_predicates={"broken": broken, "vague": vague})
    script = json.dumps({"script": [{"tool": "a", "args": {}}, {"tool": "b", "args": {}}]})
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(script, "t1"), "approve"))
    assert [e["data"]["target"] for e in events if e["type"] == "approval-required"] == ["a", "b"]
    err = capfd.readouterr().err
    assert "predicate exploded" in err and "'yes'" in err
    runtime.close()


class Action(pydantic.BaseModel):
    kind: str
    product_id: str
    new_price: float


class PlanBody(pydantic.BaseModel):
    actions: list[Action]
    rationale: str


PRODUCTS = define_reference("ProductSet", {"type": "object", "properties": {"skus": {"type": "array"}}, "required": ["skus"]})


def plan_runtime(dispatcher: Any, plans: str = "always") -> Any:
    plan = define_plan("PricePlan", PlanBody)
    spec = define_runtime(
        define_tenant("acme", "v1"),
        agents=[
            define_coordinator("coordinator", model="claude-sonnet-4-6", prompt="c", routes=["planner", "executor"]),
            define_planner("planner", model="claude-sonnet-4-6", prompt="p", plan=plan),
            define_executor("executor", model="claude-sonnet-4-6", prompt="e", plan=plan),
        ],
        references=[PRODUCTS],
        approval_policies=ApprovalPolicies(plans={"kind": plans}, tools={"kind": "never"}),
        providers=PROVIDERS,
    )
    return create_runtime(spec, interpreter="scripted", action_dispatcher=dispatcher)


def plan_script(body: dict[str, Any], plan_id: str = "plan-1") -> str:
    store = {"tool": "storePlan", "args": {"specName": "PricePlan", "planId": plan_id, "body": body}}
    execute = {"tool": "executePlan", "args": {"planId": plan_id}}
    return json.dumps(
        {
            "script": [
                {"tool": "call_agent", "args": {"agent": "planner", "prompt": json.dumps(store)}},
                {"tool": "call_agent", "args": {"agent": "executor", "prompt": json.dumps(execute)}},
            ]
        }
    )


BODY = {"actions": [{"kind": "price_change", "product_id": "p-1", "new_price": 9.99}], "rationale": "match"}


def test_plan_gate_dispatcher_not_called_until_the_decision() -> None:
    dispatched: list[tuple[Any, DispatchContext]] = []

    def dispatcher(actions: list[dict[str, Any]], ctx: DispatchContext) -> dict[str, Any]:
        dispatched.append((actions, ctx))
        return {"entitiesAffected": len(actions), "summary": "changed", "details": {"batch": 7}}

    runtime = plan_runtime(dispatcher)
    stream = runtime.query(plan_script(BODY), "t1")

    def before(event: dict[str, Any]) -> None:
        assert dispatched == []

    events = asyncio.run(answer_inside_loop(runtime, stream, "approve", before))
    gate = [e for e in events if e["type"] in {"approval-required", "approval-decision", "plan-status-change"}]
    assert [(e["type"], e["data"].get("from"), e["data"].get("to")) for e in gate] == [
        ("approval-required", None, None),
        ("plan-status-change", "draft", "pending_approval"),
        ("approval-decision", None, None),
        ("plan-status-change", "pending_approval", "approved"),
    ]
    required = gate[0]["data"]
    assert required["kind"] == "plan" and required["target"] == "plan-1" and required["correlationId"] == "plan-1"
    assert required["payload"]["id"] == "plan-1" and required["payload"]["status"] == "draft"
    assert required["threadId"] == "t1-executor"
    [(actions, ctx)] = dispatched
    assert actions == [{"kind": "price_change", "payload": {"product_id": "p-1", "new_price": 9.99}, "references": []}]
    assert ctx == {"resolved_refs": {}}
    assert isinstance(ctx, dict) and "run_id" not in ctx
    assert ctx.run_id == stream.run_id and ctx.plan_id == "plan-1" and ctx.attempt == 1
    assert ctx.idempotency_key.startswith(stream.run_id + ":")
    result = next(e for e in events if e.get("toolName") == "executePlan" and e["state"] == "result")["result"]
    resolved = [{"type": "price_change", "payload": {"product_id": "p-1", "new_price": 9.99}}]
    assert result == {
        "entitiesAffected": 1,
        "summary": "changed",
        "details": {"batch": 7, "resolvedActions": resolved},
        "resolvedActions": resolved,
    }
    runtime.close()


def test_plan_reject_and_revise_keep_the_plan_in_draft() -> None:
    dispatched: list[Any] = []
    runtime = plan_runtime(lambda actions, ctx: dispatched.append(actions))
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(plan_script(BODY), "t1"), "reject", feedback="no"))
    result = next(e for e in events if e.get("toolName") == "executePlan" and e["state"] == "result")["result"]
    assert result == {"error": "Plan plan-1 rejected: no"}
    changes = [(e["data"]["from"], e["data"]["to"]) for e in events if e["type"] == "plan-status-change"]
    assert changes == [("draft", "pending_approval"), ("pending_approval", "draft")]

    partial = PlanBody(actions=[Action(kind="price_change", product_id="p-1", new_price=8.0)], rationale="cheaper")
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(plan_script(BODY, "plan-2"), "t2"), "revise", partial=partial))
    decision = next(e for e in events if e["type"] == "approval-decision")["data"]
    assert decision["outcome"] == {"outcome": "revise", "partial": partial.model_dump(mode="json")}
    result = next(e for e in events if e.get("toolName") == "executePlan" and e["state"] == "result")["result"]
    assert result == {"rejected": True, "should_revise": True, "plan_id": "plan-2", "partial": partial.model_dump(mode="json")}
    assert dispatched == []
    runtime.close()


def test_async_dispatcher_with_resolved_references() -> None:
    seen: list[DispatchContext] = []

    async def dispatcher(actions: list[dict[str, Any]], ctx: DispatchContext) -> None:
        await asyncio.sleep(0)
        seen.append(ctx)

    runtime = plan_runtime(dispatcher, plans="never")

    async def run() -> list[dict[str, Any]]:
        ref = await runtime.create_reference(PRODUCTS, {"skus": ["a", "b"]})
        body = {
            "actions": [{"kind": "price_change", "product_id": "p-1", "new_price": 1.0, "references": [{"kind": "ProductSet", "id": ref["id"]}]}],
            "rationale": "r",
        }
        events = [e async for e in runtime.query(plan_script(body), "t1")]
        assert seen[0] == {"resolved_refs": {"ProductSet": {ref["id"]: {"skus": ["a", "b"]}}}}
        return events

    events = asyncio.run(run())
    result = next(e for e in events if e.get("toolName") == "executePlan" and e["state"] == "result")["result"]
    assert result["entitiesAffected"] == 0 and result["summary"] is None
    runtime.close()


def test_dispatcher_failures_fail_the_plan() -> None:
    def boom(actions: Any, ctx: Any) -> Any:
        raise RuntimeError("warehouse offline")

    runtime = plan_runtime(boom, plans="never")
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(plan_script(BODY), "t1"), "approve"))
    result = next(e for e in events if e.get("toolName") == "executePlan" and e["state"] == "result")["result"]
    assert "Dispatch failed: inner dispatcher failed:" in result["error"]
    assert "RuntimeError: warehouse offline" in result["error"]
    runtime.close()

    runtime = plan_runtime(lambda actions, ctx: {"entitiesAffected": 1, "extra": True}, plans="never")
    events = asyncio.run(answer_inside_loop(runtime, runtime.query(plan_script(BODY), "t1"), "approve"))
    result = next(e for e in events if e.get("toolName") == "executePlan" and e["state"] == "result")["result"]
    assert "action_dispatcher returned unexpected field `extra`" in result["error"]
    runtime.close()
