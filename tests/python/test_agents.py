from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from flowai_harness import (
    AgentSpec,
    ApprovalPolicyPatch,
    ModelSpec,
    PlanSpec,
    StorageFactories,
    StorageFactorySpec,
    ToolkitSpec,
    define_coordinator,
    define_executor,
    define_plan,
    define_planner,
    define_specialist,
    define_tool,
    layered_prompt,
)

PLAN = define_plan("ScenarioPlan", {"type": "object"})


def test_model_spec() -> None:
    assert ModelSpec.model_validate("claude-sonnet-4-6") == ModelSpec(id="claude-sonnet-4-6")
    assert ModelSpec(id="claude-sonnet-4-6").model_dump(by_alias=True, mode="json") == {
        "id": "claude-sonnet-4-6",
        "provider": None,
    }
    assert ModelSpec(id="gpt-4o", provider="openai-compatible").provider == "openai-compatible"


def test_executor_exact_dump() -> None:
    agent = define_executor("scenario_executor", model="claude-sonnet-4-6", prompt="Run plans.", plan=PLAN)
    assert agent.model_dump(by_alias=True, mode="json") == {
        "name": "scenario_executor",
        "role": "executor",
        "stateful": False,
        "model": {"id": "claude-sonnet-4-6", "provider": None},
        "systemPrompt": "Run plans.",
        "routes": [],
        "toolkits": [],
    }
    with_turns = define_executor("e", model="m", prompt="p", plan=PLAN, max_turns=24)
    assert with_turns.model_dump(by_alias=True, mode="json")["maxTurns"] == 24
    assert "max_turns" not in agent.model_dump()
    assert with_turns.model_dump()["max_turns"] == 24


def test_dump_validate_dump_is_stable() -> None:
    agent = define_coordinator("c", model={"id": "m", "provider": "bedrock"}, prompt="p", routes=["a"], max_turns=3)
    dumped = agent.model_dump(by_alias=True, mode="json")
    assert AgentSpec.model_validate(dumped).model_dump(by_alias=True, mode="json") == dumped


def test_alias_input_with_approval_policies() -> None:
    agent = AgentSpec.model_validate(
        {
            "name": "a",
            "role": "specialist",
            "model": "m",
            "systemPrompt": "p",
            "approvalPolicies": {"plans": "always", "tools": "never"},
        }
    )
    assert agent.approval_policies == ApprovalPolicyPatch(plans="always", tools="never")  # type: ignore[arg-type]
    assert "approvalPolicies" not in agent.model_dump(by_alias=True)


@pytest.mark.parametrize(
    ("role", "stateful"), [("coordinator", True), ("planner", True), ("executor", False), ("specialist", False)]
)
def test_stateful_default_by_role(role: str, stateful: bool) -> None:
    data: dict[str, Any] = {"name": "a", "role": role, "model": "m", "systemPrompt": "p", "routes": ["b"]}
    assert AgentSpec.model_validate(data).stateful is stateful
    assert AgentSpec.model_validate({**data, "stateful": None}).stateful is stateful
    assert AgentSpec.model_validate({**data, "stateful": not stateful}).stateful is (not stateful)


def test_helper_stateful_override() -> None:
    assert define_specialist("s", model="m", prompt="p", stateful=True).stateful is True
    assert define_planner("p", model="m", prompt="p", plan=PLAN).stateful is True
    assert define_planner("p", model="m", prompt="p", plan=PLAN, stateful=False).stateful is False


def test_bad_role_and_max_turns() -> None:
    with pytest.raises(ValidationError):
        AgentSpec.model_validate({"name": "a", "role": "test_case_builder", "model": "m", "systemPrompt": "p"})
    with pytest.raises(ValidationError):
        define_specialist("s", model="m", prompt="p", max_turns=0)
    with pytest.raises(ValidationError):
        AgentSpec.model_validate({"name": "", "role": "specialist", "model": "m", "systemPrompt": "p"})


def test_coordinator_without_routes() -> None:
    with pytest.raises(ValueError, match="define_coordinator requires at least one route") as info:
        define_coordinator("c", model="m", prompt="p")
    assert not isinstance(info.value, ValidationError)
    with pytest.raises(ValidationError, match="coordinator agents require at least one route"):
        AgentSpec(name="c", role="coordinator", model="m", system_prompt="p")  # type: ignore[arg-type]


def test_model_is_required() -> None:
    with pytest.raises(TypeError):
        define_specialist("s", prompt="p")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        define_specialist("s", model="m")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        define_specialist("s", "m", "p")  # type: ignore[misc]


def test_layered_prompt_sets_cache_key() -> None:
    prompt = layered_prompt(identity="You are a specialist.")
    agent = define_specialist("s", model="m", prompt=prompt)
    assert agent.system_prompt == prompt.text
    assert agent.prompt_cache_key == prompt.cache_key
    assert define_specialist("s", model="m", prompt="plain").prompt_cache_key is None


def test_prompt_type_checked() -> None:
    with pytest.raises(TypeError, match="prompt must be a string or LayeredPrompt"):
        define_specialist("s", model="m", prompt=3)  # type: ignore[arg-type]


def test_role_defaults_not_written_into_toolkits() -> None:
    assert define_coordinator("c", model="m", prompt="p", routes=["x"]).toolkits == []
    assert define_planner("p", model="m", prompt="p", plan=PLAN).toolkits == []
    assert define_executor("e", model="m", prompt="p", plan=PLAN).toolkits == []
    assert define_specialist("s", model="m", prompt="p").toolkits == []


def test_toolkit_dedupe_by_role() -> None:
    ids = ["references", "plans", "references"]
    assert define_coordinator("c", model="m", prompt="p", routes=["x"], toolkits=ids).toolkits == ["references", "plans"]
    assert define_planner("p", model="m", prompt="p", plan=PLAN, toolkits=ids).toolkits == ["references", "plans"]
    assert define_executor("e", model="m", prompt="p", plan=PLAN, toolkits=ids).toolkits == ["references", "plans"]
    assert define_specialist("s", model="m", prompt="p", toolkits=ids).toolkits == ids


def test_model_forms() -> None:
    assert define_specialist("s", model="m", prompt="p").model == ModelSpec(id="m")
    assert define_specialist("s", model=ModelSpec(id="m", provider="x"), prompt="p").model.provider == "x"
    assert define_specialist("s", model={"id": "m", "provider": "y"}, prompt="p").model.provider == "y"


def test_plan_stored_and_excluded() -> None:
    executor = define_executor("e", model="m", prompt="p", plan={"name": "P", "schema": {"type": "object"}})
    assert executor.plan == PlanSpec(name="P", schema={"type": "object"})  # type: ignore[call-arg]
    assert "plan" not in executor.model_dump(by_alias=True)


def test_approval_patch_with_default_sentinel() -> None:
    agent = define_specialist("s", model="m", prompt="p", approval={"tools": "always", "plans": "default"})
    assert agent.approval_policies == ApprovalPolicyPatch(tools="always")  # type: ignore[arg-type]
    patch = ApprovalPolicyPatch(plans="never")  # type: ignore[arg-type]
    assert define_specialist("s", model="m", prompt="p", approval=patch).approval_policies is patch
    assert define_specialist("s", model="m", prompt="p").approval_policies is None


def test_tool_approvals() -> None:
    agent = define_specialist("s", model="m", prompt="p", tool_approvals={"execute_query": "never"})
    assert agent.tool_approval_policies == {"execute_query": {"kind": "never"}}
    with pytest.raises(ValueError, match="tool_approvals keys must be non-empty tool names"):
        define_specialist("s", model="m", prompt="p", tool_approvals={"": "never"})
    with pytest.raises(ValueError, match="approval rule must be"):
        define_specialist("s", model="m", prompt="p", tool_approvals={"x": "sometimes"})


def test_tools_stored_as_tuple_and_excluded() -> None:
    tool = define_tool("t", {})
    agent = define_specialist("s", model="m", prompt="p", tools=[tool])
    assert agent.tools == (tool,)
    assert "tools" not in agent.model_dump(by_alias=True)


def test_toolkit_and_storage_specs() -> None:
    assert ToolkitSpec(id="catalog").model_dump(by_alias=True, mode="json") == {"id": "catalog", "config": None}
    with pytest.raises(ValidationError):
        ToolkitSpec(id="")
    assert StorageFactories().model_dump(by_alias=True, mode="json") == {"kv": None, "plans": None, "memory": None}
    factories = StorageFactories(kv=StorageFactorySpec(kind="redis", config={"url": "x"}))
    assert factories.model_dump(by_alias=True, mode="json")["kv"] == {"kind": "redis", "config": {"url": "x"}}
