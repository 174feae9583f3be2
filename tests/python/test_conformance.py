"""The conformance wire document of API.md §10 loads and dumps back unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from flowai_harness import (
    AgentSpec,
    ApprovalPolicies,
    ModelSpec,
    RuntimeSpec,
    ToolkitSpec,
    define_runtime,
    define_specialist,
)
from flowai_harness.errors import FlowAIValueError

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "runtime_spec.json"


def agent(name: str, role: str, stateful: bool, model: str, prompt: str, routes: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "role": role,
        "stateful": stateful,
        "model": {"id": model, "provider": None},
        "systemPrompt": prompt,
        "routes": routes,
        "toolkits": [],
    }


# API.md §10, written out from the contract's tables.
DOCUMENT: dict[str, Any] = {
    "tenant": {"resourceId": "acme", "version": "v1"},
    "agents": [
        agent("coordinator", "coordinator", True, "claude-sonnet-4-6", "You coordinate analytical work.", ["planner", "executor"]),
        agent("planner", "planner", True, "claude-sonnet-4-6", "You produce typed plans.", []),
        agent("executor", "executor", False, "claude-haiku-4-5", "You execute approved plans.", []),
        agent("product_insights", "specialist", False, "claude-sonnet-4-6", "You answer focused product questions.", []),
    ],
    "references": [{"name": "ProductSet", "schema": {"type": "object"}, "ttlMs": 3600000}],
    "plans": [
        {"name": "ScenarioPlan", "schema": {"type": "object"}, "displayAliases": [{"status": "draft", "alias": "pending_approval"}]}
    ],
    "toolkits": [{"id": "catalog", "config": None}],
    "approvalPolicies": {"plans": {"kind": "always"}, "tools": {"kind": "never"}},
    "storageFactories": {"kv": None, "plans": None, "memory": None},
    "providers": {"anthropic": {"apiKeyEnv": "ANTHROPIC_API_KEY"}},
}


def test_repository_fixture_is_the_contract_document() -> None:
    assert json.loads(FIXTURE.read_text(encoding="utf-8")) == DOCUMENT


@pytest.mark.parametrize("source", ["contract", "fixture"])
def test_round_trip(source: str) -> None:
    doc = DOCUMENT if source == "contract" else json.loads(FIXTURE.read_text(encoding="utf-8"))
    assert RuntimeSpec.model_validate(doc).model_dump(by_alias=True, mode="json") == doc
    assert "approvalOverrides" not in RuntimeSpec.model_validate(doc).model_dump(by_alias=True, mode="json")


def test_loaded_models() -> None:
    spec = RuntimeSpec.model_validate(DOCUMENT)
    assert spec.agents[0] == AgentSpec(
        name="coordinator",
        role="coordinator",
        model=ModelSpec(id="claude-sonnet-4-6"),
        system_prompt="You coordinate analytical work.",
        routes=["planner", "executor"],
    )
    assert spec.toolkits[0] == ToolkitSpec(id="catalog")
    assert spec.approval_policies == ApprovalPolicies()
    assert spec.tenant.resource_id == "acme"


def test_json_text_round_trip() -> None:
    spec = RuntimeSpec.model_validate_json(json.dumps(DOCUMENT))
    assert json.loads(spec.model_dump_json(by_alias=True)) == DOCUMENT


def test_unknown_toolkit_only_rejected_when_an_agent_uses_it() -> None:
    # The model accepts `catalog`; define_runtime rejects it once an agent lists it.
    RuntimeSpec.model_validate(DOCUMENT)
    with pytest.raises(FlowAIValueError, match="unknown toolkit id: catalog"):
        define_runtime(DOCUMENT["tenant"], agents=[define_specialist("s", model="m", prompt="p", toolkits=["catalog"])])


def test_wire_rejects_unknown_keys() -> None:
    with pytest.raises(ValidationError):
        RuntimeSpec.model_validate({**DOCUMENT, "bogus": []})
