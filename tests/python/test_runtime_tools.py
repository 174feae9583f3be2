"""Host tool handlers through the native runtime (API.md §2.6, §3.2, §4.3)."""

from __future__ import annotations

import asyncio
import collections
import contextvars
import enum
import gc
import json
import threading
from typing import Any

import pydantic

from flowai_harness import (
    create_runtime,
    define_coordinator,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
)
from flowai_harness.context import ReferenceClient, ToolContext

PROVIDERS = {"anthropic": {"apiKey": "unused"}}
NO_LOOP = "async Python callback requires the runtime stream to be iterated from asyncio"


def drain(stream: Any) -> list[dict[str, Any]]:
    async def collect() -> list[dict[str, Any]]:
        return [event async for event in stream]

    return asyncio.run(collect())


def spec_with(*tools: Any) -> Any:
    return define_runtime(
        define_tenant("acme", "v1"),
        agents=[
            define_coordinator("coordinator", model="claude-sonnet-4-6", prompt="c", routes=["helper"], tools=tools),
            define_specialist("helper", model="claude-sonnet-4-6", prompt="h", tools=tools),
        ],
        providers=PROVIDERS,
    )


def script(*calls: tuple[str, Any]) -> str:
    return json.dumps({"script": [{"tool": name, "args": args} for name, args in calls]})


def results(events: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        e["toolInvocationId"]: e["result"]
        for e in events
        if e["type"] == "tool-invocation" and e["state"] == "result"
    }


def test_tool_context_contents() -> None:
    seen: list[ToolContext] = []
    db = object()

    @define_tool("inspect", {"n": int})
    def inspect_ctx(args: dict[str, Any], ctx: ToolContext) -> dict[str, Any]:
        seen.append(ctx)
        return {"n": args["n"]}

    runtime = create_runtime(spec_with(inspect_ctx), services={"db": db}, interpreter="scripted")
    stream = runtime.query(script(("inspect", {"n": 1}), ("inspect", {"n": 2})), "t1")
    drain(stream)
    assert len(seen) == 2
    first, second = seen
    assert isinstance(first, ToolContext)
    assert first.get("db") is first.db is first["db"] is db
    assert first.services == {"db": db} and first.services["db"] is db
    assert (first.tool_use_id, second.tool_use_id) == ("scripted-tool-1", "scripted-tool-2")
    assert first.run_id == second.run_id == stream.run_id
    assert first.attempt == 1
    started = [j["seq"] for j in runtime.journal(stream.run_id) if j["kind"] == "ToolCallStarted"]
    assert [first.idempotency_key, second.idempotency_key] == [f"{stream.run_id}:{seq}" for seq in started]
    assert isinstance(first.references, ReferenceClient)
    assert set(first.keys()) == {"tool_use_id", "services", "references", "run_id", "idempotency_key", "attempt", "db"}
    runtime.close()


def test_sync_and_async_handlers_across_successive_event_loops() -> None:
    loops: list[Any] = []

    @define_tool("sync_tool", {"x": int})
    def sync_tool(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"double": args["x"] * 2}

    @define_tool("async_tool", {"x": int})
    async def async_tool(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        loops.append(asyncio.get_running_loop())
        await asyncio.sleep(0)
        return {"triple": args["x"] * 3}

    runtime = create_runtime(spec_with(sync_tool, async_tool), interpreter="scripted")
    for round_number in range(3):
        events = drain(runtime.query(script(("sync_tool", {"x": round_number}), ("async_tool", {"x": round_number})), "t1"))
        assert results(events) == {
            "scripted-tool-1": {"double": round_number * 2},
            "scripted-tool-2": {"triple": round_number * 3},
        }
    # Each asyncio.run() had its own loop, and the async handler ran on it.
    assert len(loops) == 3 and len({id(loop) for loop in loops}) == 3
    runtime.close()


def test_async_handler_runs_on_the_consuming_loop_thread() -> None:
    threads: list[int] = []

    @define_tool("where", {})
    async def where(args: dict[str, Any], ctx: Any) -> str:
        threads.append(threading.get_ident())
        return "here"

    runtime = create_runtime(spec_with(where), interpreter="scripted")

    async def consume() -> int:
        async for _ in runtime.query(script(("where", {})), "t1"):
            pass
        return threading.get_ident()

    assert asyncio.run(consume()) == threads[0]
    runtime.close()


def test_async_handlers_run_whether_or_not_the_consumer_waits_for_the_next_event() -> None:
    # A call made while the consumer waits in __anext__ is handed to that wait; one made
    # while it awaits something else is scheduled on its loop. A consumer that waits for
    # a handler's side effect before reading on must not hold that handler up, and both
    # ways run on the consuming loop, in the context the consumer iterates from.
    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen", default="unset")
    ran: dict[int, asyncio.Event] = {}
    threads: list[int] = []

    @define_tool("mark", {"n": int})
    async def mark(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        threads.append(threading.get_ident())
        await asyncio.sleep(0)
        ran[args["n"]].set()
        return {"n": args["n"], "seen": seen.get()}

    runtime = create_runtime(spec_with(mark), interpreter="scripted")
    steps = 8

    async def consume() -> list[dict[str, Any]]:
        seen.set("consumer")
        ran.update({n: asyncio.Event() for n in range(steps)})
        events = []
        async for event in runtime.query(script(*[("mark", {"n": n}) for n in range(steps)]), "t1"):
            events.append(event)
            if event["type"] == "tool-invocation" and event["state"] == "call" and event["args"]["n"] % 2 == 0:
                await asyncio.wait_for(ran[event["args"]["n"]].wait(), timeout=30)
        return events

    events = asyncio.run(consume())
    assert results(events) == {f"scripted-tool-{n + 1}": {"n": n, "seen": "consumer"} for n in range(steps)}
    assert set(threads) == {threading.get_ident()}
    runtime.close()


def test_handler_errors_become_error_results() -> None:
    @define_tool("fails", {})
    def fails(args: dict[str, Any], ctx: Any) -> Any:
        raise ValueError("bad input")

    @define_tool("fails_async", {})
    async def fails_async(args: dict[str, Any], ctx: Any) -> Any:
        raise KeyError("missing")

    @define_tool("unserializable", {})
    def unserializable(args: dict[str, Any], ctx: Any) -> Any:
        return {"x": object()}

    runtime = create_runtime(spec_with(fails, fails_async, unserializable), interpreter="scripted")
    events = drain(runtime.query(script(("fails", {}), ("fails_async", {}), ("unserializable", {}), ("nope", {})), "t1"))
    got = results(events)
    assert got["scripted-tool-1"] == {"error": "ValueError: bad input"}
    assert got["scripted-tool-2"] == {"error": "KeyError: 'missing'"}
    assert got["scripted-tool-3"]["error"].startswith("TypeError: ")
    assert got["scripted-tool-4"] == {"error": "Unknown tool: nope"}
    # No text event follows an error result; the run itself completes.
    assert [e for e in events if e["type"] == "text"] == []
    assert events[-1]["type"] == "tool-agent"
    runtime.close()


def test_invalid_input_does_not_reach_the_handler() -> None:
    calls: list[Any] = []

    @define_tool("typed", {"n": int})
    def typed(args: dict[str, Any], ctx: Any) -> int:
        calls.append(args)
        return 1

    runtime = create_runtime(spec_with(typed), interpreter="scripted")
    events = drain(runtime.query(script(("typed", {"n": "one"})), "t1"))
    assert results(events)["scripted-tool-1"]["error"].startswith("Invalid input: ")
    assert calls == []
    runtime.close()


class Price(pydantic.BaseModel):
    sku: str
    amount: float


def test_return_values_pydantic_and_ui_keys() -> None:
    @define_tool("price", {})
    def price(args: dict[str, Any], ctx: Any) -> Price:
        return Price(sku="s-1", amount=9.5)

    @define_tool("nested", {})
    def nested(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        return {"prices": [Price(sku="s-2", amount=1.0)], "approvalDsl": {"card": 1}, "displaySummary": "1 price", "_cardEmitted": True}

    @define_tool("scalar", {})
    async def scalar(args: dict[str, Any], ctx: Any) -> Any:
        return None

    runtime = create_runtime(spec_with(price, nested, scalar), interpreter="scripted")
    events = drain(runtime.query(script(("price", {}), ("nested", {}), ("scalar", {})), "t1"))
    got = results(events)
    assert got == {
        "scripted-tool-1": {"sku": "s-1", "amount": 9.5},
        "scripted-tool-2": {"prices": [{"sku": "s-2", "amount": 1.0}]},
        "scripted-tool-3": None,
    }
    second_call = events.index(next(e for e in events if e.get("toolInvocationId") == "scripted-tool-2"))
    between = events[second_call + 1 : second_call + 3]
    assert between == [
        {"type": "data-flow-ui", "data": {"dsl": '{"card":1}'}},
        {"type": "text", "text": "1 price"},
    ] or between == [
        {"type": "data-flow-ui", "data": {"dsl": '{"card": 1}'}},
        {"type": "text", "text": "1 price"},
    ]
    runtime.close()


class Colour(str, enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


RETURNED: list[Any] = [
    {"b": True, "i": 1, "f": 1.0, "z": -0.0, "tenth": 0.1, "n": None, "s": 'é\n"', "l": [1, [2, (3, 4)]]},
    {"top": 2**64 - 1, "bottom": -(2**63), "e": 1e308},
    (1, "a", ()),
    {1: "int key", None: "none key", 2.5: "float key"},
    {"colour": Colour.RED, "level": Level.HIGH, Colour.RED: "enum key"},
    collections.OrderedDict([("z", 1), ("a", 2)]),
    deep(80),
    "plain",
]


def test_return_values_are_recorded_as_json_dumps_writes_them() -> None:
    """Whatever way a result is converted, it is the value the encoder's text holds."""
    from flowai_harness._results import to_json_text

    seen: list[Any] = []

    @define_tool("give", {"n": int, "sent": dict})
    def give(args: dict[str, Any], ctx: Any) -> Any:
        seen.append(args["sent"])
        return RETURNED[args["n"]] if args["n"] < len(RETURNED) else float("nan")

    sent = {"top": 2**64 - 1, "bottom": -(2**63), "tenth": 0.1, "s": "ü", "l": [[], {}], "f": 2.0, "yes": True, "z": -0.0}
    runtime = create_runtime(spec_with(give), interpreter="scripted")
    calls = [("give", {"n": n, "sent": sent}) for n in range(len(RETURNED) + 1)]
    got = results(drain(runtime.query(script(*calls), "t1")))
    # Compared as text: `True == 1` and `-0.0 == 0.0` in Python, not in JSON.
    for n, value in enumerate(RETURNED):
        assert canonical(got[f"scripted-tool-{n + 1}"]) == canonical(json.loads(to_json_text(value))), n
    nan = got[f"scripted-tool-{len(RETURNED) + 1}"]
    assert nan["error"].startswith("ValueError: "), nan
    assert [canonical(s) for s in seen] == [canonical(sent)] * (len(RETURNED) + 1)
    runtime.close()


def test_specialist_runs_host_tools_and_counts_calls_once() -> None:
    calls: list[Any] = []

    @define_tool("count", {})
    def count(args: dict[str, Any], ctx: Any) -> int:
        calls.append(ctx.tool_use_id)
        return len(calls)

    runtime = create_runtime(spec_with(count), interpreter="scripted")
    events = drain(runtime.run_specialist("helper", script(("count", {}), ("count", {}))))
    assert calls == ["scripted-tool-1", "scripted-tool-2"]
    pairs = [(e["toolInvocationId"], e["state"]) for e in events if e["type"] == "tool-invocation"]
    assert pairs == [
        ("scripted-tool-1", "call"),
        ("scripted-tool-1", "result"),
        ("scripted-tool-2", "call"),
        ("scripted-tool-2", "result"),
    ]
    runtime.close()


def test_async_handler_without_a_consuming_loop_fails_with_the_contract_text() -> None:
    release = threading.Event()
    finished = threading.Event()

    @define_tool("hold", {})
    def hold(args: dict[str, Any], ctx: Any) -> str:
        release.wait(timeout=30)
        return "released"

    @define_tool("later", {})
    async def later(args: dict[str, Any], ctx: Any) -> str:
        return "never reached"

    @define_tool("done", {})
    def done(args: dict[str, Any], ctx: Any) -> str:
        finished.set()
        return "done"

    runtime = create_runtime(spec_with(hold, later, done), interpreter="scripted")
    stream = runtime.query(script(("hold", {}), ("later", {}), ("done", {})), "t1")
    run_id = stream.run_id

    async def read_until_hold() -> None:
        async for event in stream:
            if event["type"] == "tool-invocation" and event["toolName"] == "hold":
                return

    asyncio.run(read_until_hold())
    # The consumer goes away; the run continues on its own, without an event loop.
    del stream
    gc.collect()
    release.set()
    assert finished.wait(timeout=30)
    completed = [j["data"] for j in runtime.journal(run_id) if j["kind"] == "ToolCallCompleted"]
    assert completed[1]["result"] == {"error": NO_LOOP} or NO_LOOP in json.dumps(completed[1])
    runtime.close()


def test_a_cancelled_async_handler_becomes_an_error_result() -> None:
    @define_tool("gives_up", {})
    async def gives_up(args: dict[str, Any], ctx: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        await asyncio.sleep(0)
        return "never"

    runtime = create_runtime(spec_with(gives_up), interpreter="scripted")
    events = drain(runtime.query(script(("gives_up", {}), ("gives_up", {})), "t1"))
    got = results(events)
    assert got["scripted-tool-1"] == {"error": "CancelledError: "}
    assert got["scripted-tool-2"] == {"error": "CancelledError: "}
    assert events[-1]["type"] == "tool-agent"
    runtime.close()


def test_an_async_handler_sets_context_variables_for_itself_only() -> None:
    seen: contextvars.ContextVar[str] = contextvars.ContextVar("seen_by_handler", default="unset")

    @define_tool("tag", {"n": int})
    async def tag(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        before = seen.get()
        seen.set(f"handler-{args['n']}")
        return {"before": before}

    runtime = create_runtime(spec_with(tag), interpreter="scripted")

    async def consume() -> tuple[list[dict[str, Any]], str]:
        seen.set("consumer")
        events = [event async for event in runtime.query(script(("tag", {"n": 1}), ("tag", {"n": 2})), "t1")]
        return events, seen.get()

    events, after = asyncio.run(consume())
    assert results(events) == {"scripted-tool-1": {"before": "consumer"}, "scripted-tool-2": {"before": "consumer"}}
    assert after == "consumer"
    runtime.close()


def test_many_concurrent_runs_with_async_and_sync_handlers_on_one_loop() -> None:
    # Sixteen runs read on one loop, each alternating an async and a sync handler: the
    # handoff, the loop's polling for the engine and the handlers' replies interleave
    # across runs, and every run still gets every result, in order, once.
    calls: list[tuple[str, int]] = []

    @define_tool("slow_async", {"run": str, "n": int})
    async def slow_async(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls.append((args["run"], args["n"]))
        if args["n"] % 3 == 0:
            await asyncio.sleep(0)
        return {"n": args["n"]}

    @define_tool("plain_sync", {"run": str, "n": int})
    def plain_sync(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
        calls.append((args["run"], args["n"]))
        return {"n": args["n"]}

    runtime = create_runtime(spec_with(slow_async, plain_sync), interpreter="scripted")
    steps = 12

    def run_script(run: str) -> str:
        tools = ("slow_async", "plain_sync")
        return script(*[(tools[n % 2], {"run": run, "n": n}) for n in range(steps)])

    async def one(run: str) -> list[dict[str, Any]]:
        return [event async for event in runtime.query(run_script(run), f"thread-{run}")]

    async def everything() -> list[list[dict[str, Any]]]:
        return await asyncio.gather(*(one(f"r{k}") for k in range(16)))

    for events in asyncio.run(everything()):
        assert list(results(events).values()) == [{"n": n} for n in range(steps)]
        assert events[-1]["type"] == "tool-agent"
    assert sorted(calls) == sorted((f"r{k}", n) for k in range(16) for n in range(steps))
    runtime.close()
