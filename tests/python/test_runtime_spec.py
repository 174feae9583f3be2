from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flowai_harness import (
    AgentSpec,
    ApprovalOverrides,
    ApprovalPolicies,
    RuntimeSpec,
    ToolkitSpec,
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

TENANT = define_tenant("acme", "v1")
PROVIDERS = {"anthropic": {"apiKeyEnv": "ANTHROPIC_API_KEY"}}


def agent(name: str, role: str = "specialist", routes: list[str] | None = None) -> dict[str, Any]:
    return {"name": name, "role": role, "model": "claude-sonnet-4-6", "systemPrompt": "p", "routes": routes or []}


def test_minimal_spec_exact_dump() -> None:
    spec = RuntimeSpec(
        tenant=TENANT,
        agents=[define_planner("planner", model="claude-sonnet-4-6", prompt="You produce typed plans.", plan=define_plan("ScenarioPlan", {"type": "object"}))],
        references=[define_reference("ProductSet", {"type": "object", "properties": {"skus": {"type": "array"}}}, ttl_ms=100)],
        plans=[define_plan("ScenarioPlan", {"type": "object"})],
        providers=PROVIDERS,
    )
    assert spec.model_dump(by_alias=True, mode="json") == {
        "tenant": {"resourceId": "acme", "version": "v1"},
        "agents": [
            {
                "name": "planner",
                "role": "planner",
                "stateful": True,
                "model": {"id": "claude-sonnet-4-6", "provider": None},
                "systemPrompt": "You produce typed plans.",
                "routes": [],
                "toolkits": [],
            }
        ],
        "references": [{"name": "ProductSet", "schema": {"type": "object", "properties": {"skus": {"type": "array"}}}, "ttlMs": 100}],
        "plans": [{"name": "ScenarioPlan", "schema": {"type": "object"}, "displayAliases": []}],
        "toolkits": [],
        "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
        "storageFactories": {"kv": None, "plans": None, "memory": None},
        "providers": {"anthropic": {"apiKeyEnv": "ANTHROPIC_API_KEY"}},
    }


def test_direct_construction_does_not_augment_prompts() -> None:
    spec = RuntimeSpec(tenant=TENANT, agents=[agent("planner", "planner")])
    assert spec.agents[0].system_prompt == "p"


def test_overrides_kept_in_dump_when_not_empty() -> None:
    spec = RuntimeSpec(
        tenant=TENANT,
        agents=[agent("a")],
        approval_overrides=ApprovalOverrides(tools={"a": {"t": "always"}}),  # type: ignore[dict-item]
    )
    assert spec.model_dump(by_alias=True, mode="json")["approvalOverrides"] == {
        "agents": {},
        "tools": {"a": {"t": {"kind": "always"}}},
    }
    assert "approval_overrides" not in RuntimeSpec(tenant=TENANT).model_dump()
    assert "tool_bindings" not in RuntimeSpec(tenant=TENANT).model_dump()


@pytest.mark.parametrize(
    ("agents", "overrides", "message"),
    [
        (
            [agent("agent", "coordinator", ["planner"]), agent("agent")],
            None,
            "duplicate agent name 'agent'",
        ),
        (
            [agent("c1", "coordinator", ["s"]), agent("c2", "coordinator", ["s"]), agent("s")],
            None,
            "multiple coordinator agents are not supported",
        ),
        ([agent("c", "coordinator", ["c"])], None, "agent 'c' cannot route to itself"),
        (
            [agent("c", "coordinator", ["s", "s"]), agent("s")],
            None,
            "agent 'c' declares duplicate route 's'",
        ),
        ([agent("c", "coordinator", ["ghost"])], None, "agent 'c' declares unknown route target 'ghost'"),
        (
            [agent("a", "specialist", ["b"]), agent("b", "specialist", ["zz"])],
            None,
            "agent 'b' declares unknown route target 'zz'",
        ),
        (
            [agent("a")],
            {"agents": {"zed": {"tools": "always"}}, "tools": {"bob": {"t": "never"}}},
            "approval_overrides references unknown agent(s): ['bob', 'zed']",
        ),
    ],
)
def test_graph_errors(agents: list[dict[str, Any]], overrides: Any, message: str) -> None:
    data: dict[str, Any] = {"tenant": TENANT, "agents": agents}
    if overrides is not None:
        data["approvalOverrides"] = overrides
    with pytest.raises(ValidationError) as info:
        RuntimeSpec.model_validate(data)
    assert message in str(info.value)


def test_graph_error_order_route_checks_per_agent() -> None:
    # "a" routes to itself after a duplicate: duplicate comes first in route order.
    with pytest.raises(ValidationError, match="declares duplicate route 'b'"):
        RuntimeSpec.model_validate({"tenant": TENANT, "agents": [agent("a", "specialist", ["b", "b", "a"]), agent("b")]})


# --------------------------------------------------------------------------- define_runtime


def search_tool(approval: Any = "never") -> Any:
    tool = define_tool("search_products", {"query": str}, "Search products by query.", approval=approval)

    def handler(args: dict[str, Any], ctx: Any) -> list[str]:
        return []

    return tool.bind(handler)


def test_coordinator_patch_becomes_floor() -> None:
    spec = define_runtime(
        TENANT,
        agents=[
            define_coordinator(
                "coordinator", model="claude-sonnet-4-6", prompt="c", routes=["scenario_executor"],
                approval={"plans": "always", "tools": "never"},
            ),
            define_executor(
                "scenario_executor", model="claude-sonnet-4-6", prompt="e",
                plan=define_plan("ScenarioPlan", {"type": "object"}), tools=[search_tool()],
            ),
        ],
        providers=PROVIDERS,
    )
    assert spec.approval_policies == ApprovalPolicies(plans="always", tools="never")  # type: ignore[arg-type]
    assert spec.model_dump(by_alias=True, mode="json")["approvalOverrides"] == {
        "agents": {},
        "tools": {"scenario_executor": {"search_products": {"kind": "never"}}},
    }


def test_coordinator_patch_applied_over_defaults() -> None:
    spec = define_runtime(
        TENANT,
        agents=[
            define_coordinator("c", model="m", prompt="c", routes=["s"], approval={"tools": "always"}),
            define_specialist("s", model="m", prompt="s"),
        ],
    )
    assert spec.approval_policies == ApprovalPolicies(plans="always", tools="always")  # type: ignore[arg-type]
    assert "approvalOverrides" not in spec.model_dump(by_alias=True)


def test_specialist_patch_and_tool_approvals_become_overrides() -> None:
    spec = define_runtime(
        TENANT,
        agents=[
            define_specialist(
                "catalog_reader", model="claude-sonnet-4-6", prompt="r",
                approval={"tools": "always", "plans": "default"},
                tool_approvals={"execute_query": "never"},
                tools=[search_tool("always")],
            )
        ],
    )
    assert spec.model_dump(by_alias=True, mode="json")["approvalOverrides"] == {
        "agents": {"catalog_reader": {"tools": {"kind": "always"}}},
        "tools": {"catalog_reader": {"search_products": {"kind": "always"}, "execute_query": {"kind": "never"}}},
    }


def test_tool_approvals_win_over_tool_approval_and_binding_key_used() -> None:
    tool = define_tool("search", {}, approval="always", binding_id="search-v2")
    spec = define_runtime(
        TENANT,
        agents=[define_specialist("s", model="m", prompt="p", tools=[tool], tool_approvals={"search-v2": "never"})],
    )
    assert spec.approval_overrides.tools == {"s": {"search-v2": {"kind": "never"}}}


def test_explicit_floor_keeps_coordinator_patch_as_override() -> None:
    spec = define_runtime(
        TENANT,
        agents=[
            define_coordinator("c", model="m", prompt="c", routes=["s"], approval={"tools": "always"}),
            define_specialist("s", model="m", prompt="s"),
        ],
        approval_policies={"plans": "never", "tools": "never"},
    )
    assert spec.approval_policies == ApprovalPolicies(plans="never", tools="never")  # type: ignore[arg-type]
    assert spec.approval_overrides.agents["c"].model_dump(by_alias=True) == {"tools": {"kind": "always"}}


def test_explicit_overrides_used_as_is() -> None:
    spec = define_runtime(
        TENANT,
        agents=[define_specialist("s", model="m", prompt="p", approval={"tools": "always"}, tools=[search_tool()])],
        approval_overrides={"tools": {"s": {"other": "always"}}},
    )
    assert spec.approval_overrides == ApprovalOverrides(tools={"s": {"other": {"kind": "always"}}})


def test_unknown_agents_in_explicit_overrides() -> None:
    with pytest.raises(ValidationError) as info:
        define_runtime(TENANT, agents=[define_specialist("s", model="m", prompt="p")], approval_overrides={"agents": {"ghost": {"tools": "never"}}})
    assert "approval_overrides references unknown agent(s): ['ghost']" in str(info.value)


def test_two_coordinators_with_patches_fail_on_approval_policies_first() -> None:
    with pytest.raises(ValidationError) as info:
        define_runtime(
            TENANT,
            agents=[
                define_coordinator("c1", model="m", prompt="c", routes=["nowhere"], approval={"tools": "always"}),
                define_coordinator("c2", model="m", prompt="c", routes=["missing"], approval={"plans": "never"}),
            ],
        )
    text = str(info.value)
    assert "only one coordinator can provide approval_policies; pass approval_policies explicitly" in text
    assert "approval_policies" in text
    assert info.value.errors()[0]["loc"] == ("approval_policies",)


def test_duplicate_name_error_wins_over_missing_route() -> None:
    with pytest.raises(ValidationError) as info:
        define_runtime(
            TENANT,
            agents=[
                define_coordinator("agent", model="m", prompt="c", routes=["planner"]),
                define_specialist("agent", model="m", prompt="s"),
            ],
        )
    assert "duplicate agent name 'agent'" in str(info.value)
    assert "unknown route target" not in str(info.value)


def test_agents_may_be_mappings() -> None:
    spec = define_runtime(TENANT, agents=[agent("s")])
    assert isinstance(spec.agents[0], AgentSpec)


def test_toolkits_collected_from_agents() -> None:
    spec = define_runtime(
        TENANT,
        agents=[
            define_specialist("s", model="m", prompt="p", toolkits=["references", "plans"]),
            define_specialist("t", model="m", prompt="p", toolkits=["references"]),
        ],
        toolkits=[{"id": "plans", "config": {"tools": ["getPlan"]}}],
    )
    assert spec.toolkits == [ToolkitSpec(id="plans", config={"tools": ["getPlan"]}), ToolkitSpec(id="references")]


def test_plans_collected_from_agents() -> None:
    plan = define_plan("ScenarioPlan", {"type": "object"})
    other = define_plan("ScenarioPlan", {"type": "object", "title": "agent copy"})
    spec = define_runtime(
        TENANT,
        agents=[
            define_planner("p", model="m", prompt="p", plan=other),
            define_executor("e", model="m", prompt="e", plan=define_plan("Other", {"type": "object"})),
        ],
        plans=[plan],
    )
    assert [p.name for p in spec.plans] == ["ScenarioPlan", "Other"]
    assert spec.plans[0] is plan or spec.plans[0] == plan


def test_tool_bindings_collected_in_agent_order() -> None:
    a = search_tool()
    b = define_tool("lookup", {})
    c = define_tool("lookup", {}, binding_id="lookup-v2")
    spec = define_runtime(
        TENANT,
        agents=[
            define_specialist("s1", model="m", prompt="p", tools=[a, b]),
            define_specialist("s2", model="m", prompt="p", tools=[b, c]),
        ],
    )
    assert spec.tool_bindings == (a, b, c)
    assert "toolBindings" not in spec.model_dump(by_alias=True)
    explicit = define_tool("lookup", {}, description="explicit")
    with_explicit = define_runtime(TENANT, agents=[define_specialist("s", model="m", prompt="p", tools=[b])], tool_bindings=[explicit])
    assert with_explicit.tool_bindings == (explicit,)


def test_references_storage_and_providers() -> None:
    spec = define_runtime(
        {"resourceId": "acme", "version": "v1"},
        references=[{"name": "R", "schema": {"type": "object"}}],
        storage_factories={"kv": {"kind": "memory"}},
        providers=PROVIDERS,
    )
    dumped = spec.model_dump(by_alias=True, mode="json")
    assert dumped["references"] == [{"name": "R", "schema": {"type": "object"}, "ttlMs": None}]
    assert dumped["storageFactories"] == {"kv": {"kind": "memory", "config": None}, "plans": None, "memory": None}
    assert dumped["providers"] == PROVIDERS
