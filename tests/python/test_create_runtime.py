"""create_runtime's Python-side processing (API.md §2.2) up to the native constructor.

The native ``PyRuntime`` is replaced by a recorder here: these tests check what the
facade validates and exactly what it hands to ``PyRuntime._create``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import flowai_harness
from flowai_harness import (
    FlowAIError,
    RuntimeSpec,
    create_runtime,
    define_coordinator,
    define_plan,
    define_planner,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
)
from flowai_harness import _internal
from flowai_harness.context import DispatchContext, ReferenceClient, ToolContext

TENANT = define_tenant("acme", "v1")
PROVIDERS = {"anthropic": {"apiKey": "unused"}}


class Recorder:
    """Stands in for the native class and keeps the keyword arguments it was built with."""

    calls: list[dict[str, Any]] = []

    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs

    @classmethod
    def _create(cls, **kwargs: Any) -> Recorder:
        cls.calls.append(kwargs)
        return cls(kwargs)


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Recorder]]:
    Recorder.calls = []
    monkeypatch.setattr(_internal, "PyRuntime", Recorder, raising=False)
    yield Recorder


def handler(args: dict[str, Any], ctx: Any) -> dict[str, Any]:
    return {"ok": True}


def specialist_spec(*tools: Any, **kwargs: Any) -> RuntimeSpec:
    return define_runtime(TENANT, agents=[define_specialist("s", model="m", prompt="S.", tools=list(tools), **kwargs)], providers=PROVIDERS)


def created(runtime: Any) -> dict[str, Any]:
    assert isinstance(runtime, Recorder)
    return runtime.kwargs


def test_without_native_runtime_validation_runs_then_flowai_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(_internal, "PyRuntime", raising=False)
    with pytest.raises(ValueError, match="no Python handler"):
        create_runtime(specialist_spec(define_tool("t", {})))
    with pytest.raises(FlowAIError, match="PyRuntime"):
        create_runtime(specialist_spec())


def test_exact_native_call(recorder: type[Recorder]) -> None:
    tool = define_tool("search_products", {"query": str}, "Search products by query.", approval="always")(handler)
    spec = specialist_spec(tool)

    def hook(event: dict[str, Any]) -> None:
        pass

    def dispatcher(actions: list[dict[str, Any]], ctx: Any) -> None:
        pass

    services = {"db": object()}
    kwargs = created(
        create_runtime(
            spec,
            services=services,
            action_dispatcher=dispatcher,
            event_hooks=(hook,),
            interpreter="scripted",
            store="/tmp/x.redb",
            durability="eventual",
        )
    )
    assert set(kwargs) == {
        "spec_json", "host_tools", "predicates", "action_dispatcher", "event_hooks", "services",
        "tool_context_factory", "dispatch_context_factory", "interpreter", "mock_response", "store", "durability",
    }
    assert json.loads(kwargs["spec_json"]) == spec.model_dump(by_alias=True, mode="json")
    assert kwargs["host_tools"] == [
        (
            "s",
            "search_products",
            "search_products",
            "Search products by query.",
            json.dumps(tool.input_schema),
            '{"kind": "always"}',
            handler,
        )
    ]
    assert kwargs["predicates"] == {}
    assert kwargs["action_dispatcher"] is dispatcher
    assert kwargs["event_hooks"] == [hook]
    assert kwargs["services"] == services
    assert kwargs["services"]["db"] is services["db"]
    assert kwargs["dispatch_context_factory"] is DispatchContext
    assert kwargs["interpreter"] == "scripted"
    assert kwargs["mock_response"] is None
    assert kwargs["store"] == "/tmp/x.redb"
    assert kwargs["durability"] == "eventual"


def test_defaults(recorder: type[Recorder]) -> None:
    kwargs = created(create_runtime(specialist_spec()))
    assert kwargs["interpreter"] == "noop"
    assert kwargs["store"] is None
    assert kwargs["durability"] == "immediate"
    assert kwargs["event_hooks"] == []
    assert kwargs["services"] == {}
    assert kwargs["action_dispatcher"] is None


def test_mapping_spec_is_validated_and_augmented(recorder: type[Recorder]) -> None:
    wire = {
        "tenant": {"resourceId": "acme", "version": "v1"},
        "agents": [{"name": "planner", "role": "planner", "model": {"id": "m"}, "systemPrompt": "You plan."}],
        "providers": PROVIDERS,
    }
    kwargs = created(create_runtime(wire))
    prompt = json.loads(kwargs["spec_json"])["agents"][0]["systemPrompt"]
    assert prompt.startswith("You plan.\n\n# Tools\n")
    assert "storePlan" in prompt and "executePlan" not in prompt
    with pytest.raises(ValueError):
        create_runtime({"tenant": {"resourceId": "", "version": "v1"}})


def test_augmentation_is_not_repeated_for_define_runtime_output(recorder: type[Recorder]) -> None:
    spec = define_runtime(
        TENANT,
        agents=[
            define_coordinator("c", model="m", prompt="C.", routes=["p"]),
            define_planner("p", model="m", prompt="P.", plan=define_plan("Plan", {"type": "object"})),
        ],
        providers=PROVIDERS,
    )
    kwargs = created(create_runtime(spec))
    assert json.loads(kwargs["spec_json"]) == spec.model_dump(by_alias=True, mode="json")


def test_data_environment_not_supported(recorder: type[Recorder]) -> None:
    with pytest.raises(NotImplementedError, match="data environments are not supported"):
        create_runtime(specialist_spec(), data_environment={"catalog": {}})
    with pytest.raises(NotImplementedError, match="data environments are not supported"):
        create_runtime(specialist_spec(), target_database_url="postgres://x")
    with pytest.raises(NotImplementedError, match="data environments are not supported"):
        flowai_harness.normalize_data_environment({"catalog": {}})
    assert flowai_harness.normalize_data_environment() is None


def test_services_validation(recorder: type[Recorder]) -> None:
    spec = specialist_spec()
    with pytest.raises(TypeError, match="services must be a mapping from service name to Python object"):
        create_runtime(spec, services=[("db", 1)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="services keys must be non-empty strings"):
        create_runtime(spec, services={"": 1})
    with pytest.raises(TypeError, match="services keys must be non-empty strings"):
        create_runtime(spec, services={3: 1})  # type: ignore[dict-item]
    for reserved in ("tool_use_id", "services", "references", "run_id", "idempotency_key", "attempt"):
        with pytest.raises(ValueError, match=f"services key '{reserved}' is reserved by the runtime tool context"):
            create_runtime(spec, services={reserved: 1})


def test_data_environment_checked_before_services(recorder: type[Recorder]) -> None:
    with pytest.raises(NotImplementedError):
        create_runtime(specialist_spec(), data_environment={}, services={"services": 1})


def test_dynamic_approval_from_tool_callable(recorder: type[Recorder]) -> None:
    def judge(args: Any, ctx: Any) -> bool:
        return True

    tool = define_tool("refund", {}, approval=judge)(handler)
    kwargs = created(create_runtime(specialist_spec(tool)))
    assert kwargs["predicates"] == {"refund_approval": judge}
    assert json.loads(kwargs["host_tools"][0][5]) == {"kind": "dynamic", "value": "refund_approval"}


def test_dynamic_approval_needs_registration(recorder: type[Recorder]) -> None:
    tool = define_tool("refund", {}, approval={"kind": "dynamic", "value": "refund_check"})(handler)
    with pytest.raises(ValueError, match="dynamic approval predicate 'refund_check' is not registered"):
        create_runtime(specialist_spec(tool))

    def check(args: Any, ctx: Any) -> bool:
        return False

    def extra(args: Any, ctx: Any) -> bool:
        return True

    kwargs = created(create_runtime(specialist_spec(tool), approval_predicates={"refund_check": check, "plan_check": extra}))
    assert kwargs["predicates"] == {"refund_check": check, "plan_check": extra}


def test_dynamic_approval_checked_for_tool_bindings_param(recorder: type[Recorder]) -> None:
    unattached = define_tool("other", {}, approval={"kind": "dynamic", "value": "nobody"})(handler)
    with pytest.raises(ValueError, match="dynamic approval predicate 'nobody' is not registered"):
        create_runtime(specialist_spec(), tool_bindings=[unattached])


def test_approval_predicates_shape(recorder: type[Recorder]) -> None:
    with pytest.raises(TypeError, match="approval predicate 'x' must be callable"):
        create_runtime(specialist_spec(), approval_predicates={"x": True})  # type: ignore[dict-item]


def test_agent_tool_needs_handler(recorder: type[Recorder]) -> None:
    unbound = define_tool("lookup", {}, binding_id="lookup-v2")
    with pytest.raises(ValueError, match="tool binding 'lookup-v2' for agent 's' has no Python handler"):
        create_runtime(specialist_spec(unbound))


def test_tool_bindings_param_supplies_handlers(recorder: type[Recorder]) -> None:
    unbound = define_tool("lookup", {})
    bound = unbound.bind(handler)
    kwargs = created(create_runtime(specialist_spec(unbound), tool_bindings=[bound]))
    assert kwargs["host_tools"][0][0:3] == ("s", "lookup", "lookup")
    assert kwargs["host_tools"][0][6] is handler


def test_host_tools_per_agent_in_order(recorder: type[Recorder]) -> None:
    a = define_tool("a", {})(handler)
    b = define_tool("b", {}, binding_id="b-key")(handler)
    spec = define_runtime(
        TENANT,
        agents=[
            define_specialist("s1", model="m", prompt="S.", tools=[a, b]),
            define_specialist("s2", model="m", prompt="S.", tools=[b]),
        ],
        providers=PROVIDERS,
    )
    kwargs = created(create_runtime(spec))
    assert [entry[:3] for entry in kwargs["host_tools"]] == [("s1", "a", "a"), ("s1", "b-key", "b"), ("s2", "b-key", "b")]


def test_testing_config(recorder: type[Recorder]) -> None:
    spec = specialist_spec()
    kwargs = created(create_runtime(spec, testing={"mock_response": "hello"}))
    assert (kwargs["interpreter"], kwargs["mock_response"]) == ("noop", "hello")
    with pytest.raises(ValueError, match="create_runtime accepts either testing or a non-default interpreter, not both"):
        create_runtime(spec, testing={"mock_response": "x"}, interpreter="scripted")
    with pytest.raises(ValueError) as unknown:
        create_runtime(spec, testing={"mock": "x", "extra": 1})  # type: ignore[typeddict-unknown-key]
    assert str(unknown.value) == "unsupported testing config keys: ['extra', 'mock']; expected ['mock_response']"
    with pytest.raises(ValueError, match="testing config requires 'mock_response'"):
        create_runtime(spec, testing={})  # type: ignore[typeddict-item]
    with pytest.raises(TypeError, match=r"testing\['mock_response'\] must be a string"):
        create_runtime(spec, testing={"mock_response": 3})  # type: ignore[typeddict-item]


def test_interpreter_passed_through_for_native_validation(recorder: type[Recorder]) -> None:
    kwargs = created(create_runtime(specialist_spec(), interpreter="bogus"))  # type: ignore[arg-type]
    assert kwargs["interpreter"] == "bogus"


# --------------------------------------------------------------------------- contexts


class FakeRuntime:
    """Records reference calls the way the native runtime's awaitables would answer them."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def create_reference(self, reference: Any, value: Any, glimpse: Any = None) -> dict[str, Any]:
        self.calls.append(("create", reference, value, glimpse))
        return {"kind": "K", "id": "1", "glimpse": glimpse}

    async def resolve_reference(self, reference: Any) -> Any:
        self.calls.append(("resolve", reference))
        return {"v": 1}

    async def reference_glimpse(self, reference: Any) -> Any:
        self.calls.append(("glimpse", reference))
        return {"g": 1}


def test_tool_context_from_factory(recorder: type[Recorder]) -> None:
    db = object()
    kwargs = created(create_runtime(specialist_spec(), services={"db": db}))
    runtime = FakeRuntime()
    ctx = kwargs["tool_context_factory"](
        runtime=runtime, tool_use_id="scripted-tool-1", run_id="01J", idempotency_key="k", attempt=1
    )
    assert isinstance(ctx, ToolContext)
    assert ctx.get("db") is ctx.db is ctx["db"] is db
    assert ctx.services == {"db": db}
    assert ctx.tool_use_id == "scripted-tool-1"
    assert (ctx.run_id, ctx.idempotency_key, ctx.attempt) == ("01J", "k", 1)
    assert isinstance(ctx.references, ReferenceClient)
    assert set(ctx.keys()) == {"tool_use_id", "services", "references", "run_id", "idempotency_key", "attempt", "db"}


def test_tool_context_access_rules() -> None:
    ctx = ToolContext({"a": 1})
    assert ctx["a"] == 1 and ctx.a == 1 and ctx.get("a") == 1
    assert "a" in ctx and "b" not in ctx
    assert ctx.get("b") is None and ctx.get("b", 5) == 5
    with pytest.raises(KeyError):
        ctx["b"]
    with pytest.raises(AttributeError):
        ctx.b  # noqa: B018
    copy = ctx.as_dict()
    copy["a"] = 2
    assert ctx["a"] == 1
    assert list(ctx.keys()) == ["a"]
    with pytest.raises(AttributeError):
        ctx.a = 3


def test_reference_client_forwards_to_runtime() -> None:
    runtime = FakeRuntime()
    client = ReferenceClient(runtime)

    async def use() -> tuple[Any, Any, Any]:
        created_ref = await client.create("K", {"x": 1}, glimpse={"n": 1})
        return created_ref, await client.resolve(created_ref), await client.glimpse(created_ref)

    created_ref, value, glimpse = asyncio.run(use())
    assert created_ref == {"kind": "K", "id": "1", "glimpse": {"n": 1}}
    assert value == {"v": 1} and glimpse == {"g": 1}
    assert runtime.calls == [
        ("create", "K", {"x": 1}, {"n": 1}),
        ("resolve", created_ref),
        ("glimpse", created_ref),
    ]


def test_dispatch_context() -> None:
    ctx = DispatchContext({"K": {"1": {"v": 1}}}, run_id="r", plan_id="p", idempotency_key="k", attempt=2)
    assert ctx == {"resolved_refs": {"K": {"1": {"v": 1}}}}
    assert isinstance(ctx, dict)
    assert (ctx.run_id, ctx.plan_id, ctx.idempotency_key, ctx.attempt) == ("r", "p", "k", 2)
    assert "run_id" not in ctx
    assert DispatchContext({}, run_id="r", plan_id="p", idempotency_key="k", attempt=1) == {"resolved_refs": {}}
