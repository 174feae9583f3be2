"""The native runtime handle and its event stream (API.md §2.4, §3, §4), end to end."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

import flowai_harness
from flowai_harness import (
    ApprovalPolicies,
    FlowAIError,
    create_runtime,
    define_coordinator,
    define_executor,
    define_plan,
    define_planner,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
)
from flowai_harness._internal import PyRuntimeEventStream
from flowai_harness.errors import FlowAIValueError

PROVIDERS = {"anthropic": {"apiKey": "unused"}}
ZERO_USAGE = {
    "promptTokens": 0,
    "completionTokens": 0,
    "cacheReadInputTokens": 0,
    "cacheCreationInputTokens": 0,
    "totalTokens": 0,
}
ULID = re.compile(r"^[0-9A-HJKMNP-TV-Z]{26}$")


def drain(stream: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in stream]

    return asyncio.run(collect())


def echo_tool(calls: list[Any]) -> Any:
    @define_tool("echo", {"text": str}, description="Echo the text.")
    def echo(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls.append(args)
        return {"echo": args["text"]}

    return echo


def coordinator_spec(tools: tuple[Any, ...] = ()) -> Any:
    return define_runtime(
        define_tenant("acme", "v1"),
        agents=[
            define_coordinator("coordinator", model="claude-sonnet-4-6", prompt="You coordinate.", routes=["helper"], tools=tools),
            define_specialist("helper", model="claude-sonnet-4-6", prompt="You help."),
        ],
        providers=PROVIDERS,
    )


def test_runtime_is_the_native_class() -> None:
    runtime = create_runtime(coordinator_spec())
    assert type(runtime).__name__ == "PyRuntime"
    assert flowai_harness.Runtime is type(runtime)
    assert runtime.resource_id == "acme"
    runtime.close()


def test_query_and_run_id_need_no_event_loop() -> None:
    runtime = create_runtime(coordinator_spec())
    stream = runtime.query("hello", "t1")
    assert isinstance(stream, PyRuntimeEventStream)
    assert ULID.match(stream.run_id)
    assert stream.__aiter__() is stream
    # Nothing ran yet: the run starts on the first __anext__.
    assert runtime.runs() == []
    events = drain(stream)
    assert [e["type"] for e in events] == ["tool-agent", "step-start", "finish", "tool-agent"]
    assert runtime.run(stream.run_id)["status"] == "completed"
    runtime.close()


def test_noop_event_shapes() -> None:
    runtime = create_runtime(coordinator_spec())
    events = drain(runtime.query("hello", "t1"))
    call, start, finish, result = events
    assert set(call) == {"type", "agentName", "toolInvocationId", "state"}
    assert call["agentName"] == "coordinator" and call["state"] == "call"
    assert call["toolInvocationId"].startswith("inv-")
    assert start == {"type": "step-start"}
    assert finish == {"type": "finish", "finishReason": "stop", "usage": ZERO_USAGE}
    assert result == {**call, "state": "result"}
    runtime.close()


def test_testing_mock_response() -> None:
    runtime = create_runtime(coordinator_spec(), testing={"mock_response": "canned"})
    events = drain(runtime.query("hello", "t1"))
    assert events[1:-1] == [
        {"type": "step-start"},
        {"type": "text", "text": "canned"},
        {"type": "finish", "finishReason": "stop", "usage": ZERO_USAGE},
    ]
    runtime.close()


def test_scripted_plain_text_and_single_call() -> None:
    calls: list[Any] = []
    runtime = create_runtime(coordinator_spec((echo_tool(calls),)), interpreter="scripted")
    events = drain(runtime.query("not json", "t1"))
    assert events[1:3] == [{"type": "step-start"}, {"type": "text", "text": "not json"}]
    events = drain(runtime.query(json.dumps({"tool": "echo", "args": {"text": "hi"}}), "t1"))
    assert events[2:5] == [
        {"type": "tool-invocation", "toolInvocationId": "scripted-tool-1", "toolName": "echo", "args": {"text": "hi"}, "state": "call"},
        {
            "type": "tool-invocation",
            "toolInvocationId": "scripted-tool-1",
            "toolName": "echo",
            "args": {"text": "hi"},
            "state": "result",
            "result": {"echo": "hi"},
        },
        {"type": "text", "text": '{"echo":"hi"}'},
    ]
    assert calls == [{"text": "hi"}]
    runtime.close()


def plan_runtime(**kwargs: Any) -> Any:
    plan = define_plan("DemoPlan", {"type": "object", "properties": {"actions": {"type": "array"}}, "required": ["actions"]})
    spec = define_runtime(
        define_tenant("acme", "v1"),
        agents=[
            define_coordinator("coordinator", model="claude-sonnet-4-6", prompt="c", routes=["planner", "executor"]),
            define_planner("planner", model="claude-sonnet-4-6", prompt="p", plan=plan),
            define_executor("executor", model="claude-sonnet-4-6", prompt="e", plan=plan),
        ],
        approval_policies=ApprovalPolicies(plans={"kind": "never"}, tools={"kind": "never"}),
        providers=PROVIDERS,
    )
    return create_runtime(spec, interpreter="scripted", **kwargs)


def nested_script(body: dict[str, Any]) -> str:
    store_plan = {"tool": "storePlan", "args": {"specName": "DemoPlan", "planId": "demo-plan-1", "body": body}}
    execute = {"tool": "executePlan", "args": {"planId": "demo-plan-1"}}
    return json.dumps(
        {
            "script": [
                {"tool": "call_agent", "args": {"agent": "planner", "prompt": json.dumps(store_plan)}},
                {"tool": "call_agent", "args": {"agent": "executor", "prompt": json.dumps(execute)}},
            ]
        }
    )


def test_scripted_nested_call_agent_order() -> None:
    dispatched: list[Any] = []

    def dispatcher(actions: list[dict[str, Any]], ctx: Any) -> dict[str, Any]:
        dispatched.append(actions)
        return {"entitiesAffected": len(actions), "summary": "done"}

    runtime = plan_runtime(action_dispatcher=dispatcher)
    body = {"actions": [{"kind": "price_change", "product_id": "p-1", "new_price": 9.99}], "rationale": "test"}
    events = drain(runtime.query(nested_script(body), "t1"))
    shape = [
        (e["type"], e.get("agentName") or e.get("toolName"), e.get("state"))
        for e in events
        if e["type"] in {"tool-agent", "tool-invocation", "plan-status-change", "finish"}
    ]
    assert shape == [
        ("tool-agent", "coordinator", "call"),
        ("tool-invocation", "call_agent", "call"),
        ("tool-agent", "planner", "call"),
        ("tool-invocation", "storePlan", "call"),
        ("tool-invocation", "storePlan", "result"),
        ("finish", None, None),
        ("tool-agent", "planner", "result"),
        ("tool-invocation", "call_agent", "result"),
        ("tool-invocation", "call_agent", "call"),
        ("tool-agent", "executor", "call"),
        ("tool-invocation", "executePlan", "call"),
        ("plan-status-change", None, None),
        ("tool-invocation", "executePlan", "result"),
        ("finish", None, None),
        ("tool-agent", "executor", "result"),
        ("tool-invocation", "call_agent", "result"),
        ("finish", None, None),
        ("tool-agent", "coordinator", "result"),
    ]
    planner_call = next(e for e in events if e["type"] == "tool-agent" and e["agentName"] == "planner")
    assert planner_call["toolInvocationId"] == "scripted-tool-1"
    results = [e for e in events if e["type"] == "tool-invocation" and e["toolName"] == "call_agent" and e["state"] == "result"]
    assert results[0]["result"]["agent"] == "planner"
    assert results[0]["result"]["model"] == "claude-sonnet-4-6"
    stored = json.loads(results[0]["result"]["response"])
    assert stored["id"] == "demo-plan-1" and stored["status"] == "draft"
    assert stored["actions"] == [{"kind": "price_change", "payload": {"product_id": "p-1", "new_price": 9.99}, "references": []}]
    assert stored["context"] == {"rationale": "test"}
    change = next(e for e in events if e["type"] == "plan-status-change")
    assert change["data"] == {"planId": "demo-plan-1", "from": "draft", "to": "approved"}
    execute_result = next(e for e in events if e.get("toolName") == "executePlan" and e["state"] == "result")["result"]
    assert execute_result["entitiesAffected"] == 1 and execute_result["summary"] == "done"
    assert execute_result["resolvedActions"] == [{"type": "price_change", "payload": {"product_id": "p-1", "new_price": 9.99}}]
    assert dispatched == [[{"kind": "price_change", "payload": {"product_id": "p-1", "new_price": 9.99}, "references": []}]]
    runtime.close()


def test_event_hooks_run_in_order_before_each_event_is_yielded() -> None:
    seen: list[tuple[str, str]] = []

    def first(event: dict[str, Any]) -> None:
        seen.append(("first", event["type"]))

    def second(event: dict[str, Any]) -> None:
        seen.append(("second", event["type"]))

    runtime = create_runtime(coordinator_spec(), event_hooks=[first, second])

    async def consume() -> list[str]:
        yielded = []
        async for event in runtime.query("hello", "t1"):
            # The hooks saw this event before the consumer did.
            assert seen[-2:] == [("first", event["type"]), ("second", event["type"])]
            yielded.append(event["type"])
        return yielded

    types = asyncio.run(consume())
    assert seen == [(name, t) for t in types for name in ("first", "second")]
    runtime.close()


def test_hook_exception_propagates_out_of_anext() -> None:
    class HookError(Exception):
        pass

    def hook(event: dict[str, Any]) -> None:
        if event["type"] == "step-start":
            raise HookError("stop here")

    runtime = create_runtime(coordinator_spec(), event_hooks=[hook])

    async def consume() -> list[str]:
        types = []
        async for event in runtime.query("hello", "t1"):
            types.append(event["type"])
        return types

    with pytest.raises(HookError, match="stop here"):
        asyncio.run(consume())
    runtime.close()


def test_request_level_errors() -> None:
    specialist_only = define_runtime(
        define_tenant("acme", "v1"),
        agents=[define_specialist("helper", model="claude-sonnet-4-6", prompt="You help.")],
        providers=PROVIDERS,
    )
    runtime = create_runtime(specialist_only)
    events = drain(runtime.query("hello", "t1"))
    assert events == [{"type": "error", "error": {"message": "no coordinator agent registered in the spec"}}]
    runtime.close()

    runtime = create_runtime(coordinator_spec())
    assert drain(runtime.run_specialist("nobody", "hi")) == [
        {"type": "error", "error": {"message": "specialist 'nobody' not found"}}
    ]
    assert drain(runtime.run_specialist("coordinator", "hi")) == [
        {"type": "error", "error": {"message": "agent 'coordinator' is not a specialist"}}
    ]
    runtime.close()


def test_run_specialist_default_thread() -> None:
    runtime = create_runtime(coordinator_spec())
    stream = runtime.run_specialist("helper", "hi")
    events = drain(stream)
    assert [e["type"] for e in events] == ["tool-agent", "step-start", "finish", "tool-agent"]
    thread = runtime.run(stream.run_id)["threadId"]
    assert re.match(r"^specialist-[0-9a-f-]{36}$", thread)
    stream = runtime.run_specialist("helper", "hi", "my-thread")
    drain(stream)
    assert runtime.run(stream.run_id)["threadId"] == "my-thread"
    runtime.close()


def test_caller_chosen_run_id() -> None:
    runtime = create_runtime(coordinator_spec())
    run_id = "01JD3M0000000000000000000A"
    stream = runtime.query("hello", "t1", run_id=run_id)
    assert stream.run_id == run_id
    drain(stream)
    with pytest.raises(ValueError, match=f"run already exists: {run_id}"):
        runtime.query("hello", "t1", run_id=run_id)
    with pytest.raises(FlowAIValueError, match="run_id must be a ULID: nope"):
        runtime.query("hello", "t1", run_id="nope")
    # 26 base-32 characters that overflow 128 bits are no ULID: taken as one, the id
    # would change ("8…" and "0…" would name the same run).
    overflowing = "8" + run_id[1:]
    with pytest.raises(FlowAIValueError, match=f"run_id must be a ULID: {overflowing}"):
        runtime.query("hello", "t1", run_id=overflowing)
    with pytest.raises(ValueError, match=f"run not found: {overflowing}"):
        runtime.run(overflowing)
    # `resume` is accepted and ignored.
    assert len(drain(runtime.query("hello", "t1", {"anything": 1}))) == 4
    runtime.close()


def test_stream_cancel_before_start() -> None:
    runtime = create_runtime(coordinator_spec())
    stream = runtime.query("hello", "t1")
    stream.cancel()
    drain(stream)
    assert runtime.run(stream.run_id)["status"] == "cancelled"
    runtime.close()


def test_stream_cancel_after_start_at_a_gate() -> None:
    @define_tool("guarded", {}, approval="always")
    def guarded(args: dict[str, Any], ctx: Any) -> str:
        return "ran"

    runtime = create_runtime(coordinator_spec((guarded,)), interpreter="scripted")
    stream = runtime.query(json.dumps({"tool": "guarded", "args": {}}), "t1")

    async def consume() -> list[dict[str, Any]]:
        events = []
        async for event in stream:
            events.append(event)
            if event["type"] == "approval-required":
                stream.cancel()
        return events

    events = asyncio.run(consume())
    approval_id = next(e for e in events if e["type"] == "approval-required")["data"]["id"]
    # The gated call still gets its one result (API.md §7), and nothing follows it.
    assert events[-1] == {
        "type": "tool-invocation",
        "toolInvocationId": "scripted-tool-1",
        "toolName": "guarded",
        "args": {},
        "state": "result",
        "result": {"error": "Cancelled while awaiting approval"},
    }
    info = runtime.run(stream.run_id)
    assert info["status"] == "cancelled" and info["pendingApprovals"] == []
    assert [r["kind"] for r in runtime.journal(stream.run_id)[-3:]] == [
        "ApprovalDecided",
        "ToolCallCompleted",
        "RunCancelled",
    ]

    async def replayed() -> list[dict[str, Any]]:
        return [event async for event in runtime.replay(stream.run_id)]

    assert asyncio.run(replayed()) == events

    async def answer() -> None:
        await runtime.respond_to_approval(approval_id, "approve")

    with pytest.raises(ValueError, match="approval"):
        asyncio.run(answer())
    runtime.close()


def test_runtime_cancel_of_a_run_waiting_at_a_gate_is_done_when_it_returns() -> None:
    @define_tool("guarded", {}, approval="always")
    def guarded(args: dict[str, Any], ctx: Any) -> str:
        return "ran"

    runtime = create_runtime(coordinator_spec((guarded,)), interpreter="scripted")

    async def cancel_at_the_gate() -> str:
        stream = runtime.query(json.dumps({"tool": "guarded", "args": {}}), "t1")
        async for event in stream:
            if event["type"] == "approval-required":
                # From the consumer's own loop, while the run waits for the decision.
                runtime.cancel(stream.run_id)
                status: str = runtime.run(stream.run_id)["status"]
                return status
        raise AssertionError("no approval-required")

    # Before, the driver recorded the cancellation a moment later: 7 reads in 20 saw
    # "suspended".
    assert [asyncio.run(cancel_at_the_gate()) for _ in range(10)] == ["cancelled"] * 10
    runtime.close()


def test_finished_stream_keeps_ending() -> None:
    runtime = create_runtime(coordinator_spec())
    stream = runtime.query("hello", "t1")
    drain(stream)

    async def again() -> None:
        await stream.__anext__()

    with pytest.raises(StopAsyncIteration):
        asyncio.run(again())
    runtime.close()


def test_anext_outside_an_event_loop_is_an_error() -> None:
    runtime = create_runtime(coordinator_spec())
    stream = runtime.query("hello", "t1")
    with pytest.raises(RuntimeError):
        stream.__anext__()
    runtime.close()


def test_closed_runtime_refuses_new_runs() -> None:
    runtime = create_runtime(coordinator_spec())
    with runtime as entered:
        assert entered is runtime
    runtime.close()
    with pytest.raises(FlowAIError, match="runtime is closed"):
        runtime.query("hello", "t1")


def _script_of_echo_calls(n: int) -> str:
    return json.dumps({"script": [{"tool": "echo", "args": {"text": str(i)}} for i in range(n)]})


def test_a_loop_that_cannot_watch_a_descriptor_still_gets_every_event() -> None:
    # Native results reach a loop through a descriptor it watches; a loop without
    # add_reader gets them through call_soon_threadsafe instead.
    class NoReaders(asyncio.SelectorEventLoop):
        def add_reader(self, *args: Any, **kwargs: Any) -> Any:
            # As a loop without descriptor readers refuses (asyncio's Proactor loop raises).
            raise RuntimeError("this loop does not watch file descriptors")

    calls: list[Any] = []

    async def echo_async(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls.append(args)
        return {"echo": args["text"]}

    tool = define_tool("echo", {"text": str}, description="Echo the text.")(echo_async)
    runtime = create_runtime(coordinator_spec((tool,)), interpreter="scripted")

    async def collect() -> list[dict[str, Any]]:
        return [event async for event in runtime.query(_script_of_echo_calls(20), "t1")]

    loop = NoReaders()
    try:
        events = loop.run_until_complete(collect())
    finally:
        loop.close()
    results = [e["result"] for e in events if e.get("state") == "result" and e.get("toolName") == "echo"]
    assert results == [{"echo": str(i)} for i in range(20)]
    assert len(calls) == 20
    runtime.close()


def test_event_loops_come_and_go_without_keeping_descriptors() -> None:
    import gc
    import os

    calls: list[Any] = []
    runtime = create_runtime(coordinator_spec((echo_tool(calls),)), interpreter="scripted")
    drain(runtime.query(_script_of_echo_calls(2), "t1"))
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(30):
        drain(runtime.query(_script_of_echo_calls(2), "t1"))
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) <= before + 2
    assert len(calls) == 62
    runtime.close()


def test_a_cancelled_wait_for_the_next_event_loses_nothing() -> None:
    # The consumer gives up on one `__anext__` while a handler is still running (as
    # `asyncio.wait_for` does on a timeout); iterating again yields every event.
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow_echo(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if args["text"] == "1":
            started.set()
            await release.wait()
        return {"echo": args["text"]}

    tool = define_tool("echo", {"text": str}, description="Echo the text.")(slow_echo)
    runtime = create_runtime(coordinator_spec((tool,)), interpreter="scripted")

    async def consume() -> tuple[list[dict[str, Any]], bool]:
        stream = runtime.query(_script_of_echo_calls(3), "t1")
        events: list[dict[str, Any]] = []
        handler_started = asyncio.ensure_future(started.wait())
        while True:
            pending = asyncio.ensure_future(stream.__anext__())
            await asyncio.wait({pending, handler_started}, return_when=asyncio.FIRST_COMPLETED)
            if handler_started.done():
                for _ in range(20):  # let the wait reach the native side
                    await asyncio.sleep(0)
                if not pending.done():
                    break
            events.append(await pending)
        waited = not pending.done()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
        release.set()
        events.extend([event async for event in stream])
        return events, waited

    events, waited = asyncio.run(consume())
    assert waited
    results = [e["result"] for e in events if e.get("state") == "result" and e.get("toolName") == "echo"]
    assert results == [{"echo": "0"}, {"echo": "1"}, {"echo": "2"}]
    assert events[-1]["type"] == "tool-agent" and events[-1].get("state") == "result"
    runtime.close()


def test_worker_threads_come_from_the_environment() -> None:
    import os
    import subprocess
    import sys

    program = "import flowai_harness"
    bad = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "FLOWAI_WORKER_THREADS": "none"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert bad.returncode != 0
    assert 'FLOWAI_WORKER_THREADS must be a positive integer, got "none"' in bad.stderr
    good = subprocess.run(
        [sys.executable, "-c", program + "; print('ok')"],
        env={**os.environ, "FLOWAI_WORKER_THREADS": "3"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert good.stdout.strip() == "ok", good.stderr


def test_a_loop_stopped_in_the_middle_of_a_wait_loses_no_event() -> None:
    # As after a KeyboardInterrupt inside `run_until_complete`: one loop stops while its
    # `__anext__` waits (not cancelled); the next loop iterates on from the first event
    # the stopped one did not take.
    import threading

    release = threading.Event()

    @define_tool("echo", {"text": str}, description="Echo the text.")
    def blocking_echo(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        if args["text"] == "1":
            release.wait(timeout=30)
        return {"echo": args["text"]}

    runtime = create_runtime(coordinator_spec((blocking_echo,)), interpreter="scripted")
    stream = runtime.query(_script_of_echo_calls(3), "t1")

    async def next_event() -> dict[str, Any]:
        return await stream.__anext__()

    first_loop = asyncio.new_event_loop()
    events: list[dict[str, Any]] = []
    stuck = first_loop.create_task(asyncio.sleep(0))
    try:
        while not (events and events[-1].get("state") == "call" and events[-1].get("args") == {"text": "1"}):
            events.append(first_loop.run_until_complete(next_event()))
        stuck = first_loop.create_task(next_event())
        for _ in range(20):  # the wait reaches the native side and stays there
            first_loop.run_until_complete(asyncio.sleep(0))
        assert not stuck.done()
        release.set()

        async def rest() -> list[dict[str, Any]]:
            return [event async for event in stream]

        events.extend(asyncio.run(rest()))
    finally:
        release.set()
        stuck.cancel()
        first_loop.run_until_complete(asyncio.gather(stuck, return_exceptions=True))
        first_loop.close()
    results = [e["result"] for e in events if e.get("state") == "result" and e.get("toolName") == "echo"]
    assert results == [{"echo": "0"}, {"echo": "1"}, {"echo": "2"}]
    assert events[-1]["type"] == "tool-agent" and events[-1].get("state") == "result"
    runtime.close()
