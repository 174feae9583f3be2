"""Prompt augmentation at assembly (API.md §1.14); toolkit rows come from the native module."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flowai_harness import (
    FlowAIError,
    ToolkitSpec,
    define_coordinator,
    define_executor,
    define_plan,
    define_planner,
    define_runtime,
    define_specialist,
    define_tenant,
    define_tool,
    layered_prompt,
)
from flowai_harness import _internal
from flowai_harness._augment import augment_agent
from flowai_harness.errors import FlowAIValueError

TENANT = define_tenant("acme", "v1")
PLAN = define_plan("ScenarioPlan", {"type": "object"})


def tools_section(prompt: str) -> str:
    return prompt.split("# Tools\n", 1)[1].split("\n\n", 1)[0]


def row_names(prompt: str) -> list[str]:
    rows = tools_section(prompt).split("\n")[2:]
    return [row.split("|")[1].strip() for row in rows]


def search(args: dict[str, Any], ctx: Any) -> list[str]:
    return []


def full_runtime(**overrides: Any) -> Any:
    search_tool = define_tool("search_products", {"query": str}, "Search products by query.", approval="always")(search)
    agents = [
        define_coordinator("coordinator", model="claude-sonnet-4-6", prompt="You coordinate.", routes=["planner", "executor"]),
        define_planner("planner", model="claude-sonnet-4-6", prompt="You produce typed plans.", plan=PLAN),
        define_executor("executor", model="claude-haiku-4-5", prompt="You execute approved plans.", plan=PLAN, tools=[search_tool]),
        define_specialist("product_insights", model="claude-sonnet-4-6", prompt="You answer focused product questions."),
    ]
    return define_runtime(TENANT, agents=agents, **overrides)


def test_role_default_rows() -> None:
    spec = full_runtime()
    coordinator, planner, executor, specialist = spec.agents
    assert row_names(coordinator.system_prompt) == ["call_agent"]
    assert "storePlan" in planner.system_prompt and "getPlan" in planner.system_prompt
    assert "executePlan" not in planner.system_prompt
    for name in ("getPlan", "executePlan", "resolveRef", "glimpseRef"):
        assert name in executor.system_prompt
    assert "storePlan" not in executor.system_prompt
    assert row_names(executor.system_prompt) == ["executePlan", "getPlan", "glimpseRef", "resolveRef", "search_products"]
    # A specialist without tools is left as written.
    assert specialist.system_prompt == "You answer focused product questions."
    assert specialist.prompt_cache_key is None


def test_host_tool_row_and_runtime_label() -> None:
    executor = full_runtime().agents[2]
    assert "| search_products | Search products by query. | always |" in executor.system_prompt
    section = tools_section(executor.system_prompt)
    assert all(row.endswith("| runtime |") for row in section.split("\n")[2:] if "search_products" not in row)


def test_augmented_prompt_layout_and_cache_key() -> None:
    planner = full_runtime().agents[1]
    assert planner.system_prompt.startswith("You produce typed plans.\n\n# Tools\n| Tool | Description | Approval |\n| --- | --- | --- |\n")
    import hashlib

    assert planner.prompt_cache_key == hashlib.sha256(planner.system_prompt.encode()).hexdigest()


def test_toolkit_rows_come_from_native_catalog() -> None:
    executor = full_runtime().agents[2]
    agent_json = executor.model_dump_json(by_alias=True)
    described = json.loads(_internal.describe_role_default_tools(agent_json))
    for row in described:
        assert f"| {row['name']} | {row['description']} | runtime |" in executor.system_prompt


def test_explicit_row_in_layered_prompt_wins() -> None:
    prompt = layered_prompt(
        identity="You produce typed plans.",
        tools=[{"name": "storePlan", "description": "Our own wording.", "approval": "always"}],
    )
    planner = define_runtime(
        TENANT, agents=[define_planner("planner", model="m", prompt=prompt, plan=PLAN)]
    ).agents[0]
    assert planner.system_prompt.count("storePlan") == 1
    assert "| storePlan | Our own wording. | always |" in planner.system_prompt
    assert "getPlan" in planner.system_prompt
    assert planner.prompt_cache_key != prompt.cache_key


def test_explicit_toolkits_add_rows() -> None:
    specialist = define_runtime(
        TENANT, agents=[define_specialist("s", model="m", prompt="S.", toolkits=["references", "plans"])]
    ).agents[0]
    assert row_names(specialist.system_prompt) == ["getPlan", "glimpseRef", "resolveRef"]


def test_toolkit_config_narrows_rows_and_changes_cache_key() -> None:
    def specialist_with(toolkits: list[Any]) -> Any:
        return define_runtime(
            TENANT,
            agents=[define_specialist("s", model="m", prompt="S.", toolkits=["references"])],
            toolkits=toolkits,
        ).agents[0]

    narrowed = specialist_with([ToolkitSpec(id="references", config={"tools": ["glimpseRef"]})])
    full = specialist_with([])
    assert row_names(narrowed.system_prompt) == ["glimpseRef"]
    assert row_names(full.system_prompt) == ["glimpseRef", "resolveRef"]
    assert narrowed.prompt_cache_key != full.prompt_cache_key


def test_names_dedupe_role_defaults_first() -> None:
    executor = define_runtime(
        TENANT, agents=[define_executor("e", model="m", prompt="E.", plan=PLAN, toolkits=["plans", "references"])]
    ).agents[0]
    assert row_names(executor.system_prompt) == ["executePlan", "getPlan", "glimpseRef", "resolveRef"]


def test_plans_toolkit_role_scope_error_is_python_value_error() -> None:
    with pytest.raises(ValueError) as info:
        define_runtime(
            TENANT,
            agents=[define_specialist("s", model="m", prompt="S.", toolkits=["plans"])],
            toolkits=[{"id": "plans", "config": {"tools": ["getPlan", "executePlan", "storePlan"]}}],
        )
    assert str(info.value) == (
        "toolkit 'plans' tools are scoped by agent role; specialist agents cannot use ['executePlan', 'storePlan']"
    )
    assert not isinstance(info.value, FlowAIError)


def test_unknown_toolkit_is_native_value_error_at_define_runtime() -> None:
    with pytest.raises(ValueError, match="unknown toolkit id: catalog") as info:
        define_runtime(TENANT, agents=[define_specialist("s", model="m", prompt="S.", toolkits=["catalog"])])
    assert isinstance(info.value, FlowAIValueError)
    assert isinstance(info.value, FlowAIError)


def test_unknown_tool_and_malformed_config_from_native() -> None:
    with pytest.raises(FlowAIValueError, match="toolkit 'references' has no tool named 'nope'"):
        define_runtime(
            TENANT,
            agents=[define_specialist("s", model="m", prompt="S.", toolkits=["references"])],
            toolkits=[{"id": "references", "config": {"tools": ["nope"]}}],
        )
    with pytest.raises(FlowAIValueError, match="toolkit 'references' config is malformed"):
        define_runtime(
            TENANT,
            agents=[define_specialist("s", model="m", prompt="S.", toolkits=["references"])],
            toolkits=[{"id": "references", "config": {"tools": "resolveRef"}}],
        )


def test_toolkit_unused_by_agents_is_not_checked_by_define_runtime() -> None:
    # Only the toolkits an agent lists are composed at define_runtime (API.md §10).
    spec = define_runtime(TENANT, agents=[define_specialist("s", model="m", prompt="S.")], toolkits=[{"id": "catalog"}])
    assert spec.toolkits == [ToolkitSpec(id="catalog")]


def test_augmentation_is_idempotent() -> None:
    spec = full_runtime()
    for agent in spec.agents:
        assert augment_agent(agent, spec.toolkits) == agent
