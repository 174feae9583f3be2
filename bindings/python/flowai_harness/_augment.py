"""Prompt augmentation at assembly: the "# Tools" rows of each agent (API.md §1.14).

The built-in tool catalog (names, descriptions, schemas, role defaults and role
scoping) lives in Rust: rows come from the native ``describe_role_default_tools`` and
``describe_toolkit_tools``. Python only knows the three plans-toolkit names, to raise
its own role-scope error (API.md §1.11) before the native composer is asked.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ._native import require_native
from .prompts import augment_prompt_tools

if TYPE_CHECKING:
    from .runtime import AgentSpec, ToolkitSpec

# The names of the plans toolkit: a requested name among these that the role may not
# use gets the Python-side error of API.md §1.11; other names are left to the native
# composer ("toolkit 'plans' has no tool named ...").
_PLAN_TOOLS = frozenset({"storePlan", "getPlan", "executePlan"})
# Toolkit rows are enforced by the runtime's policy, not by a per-tool rule of the host.
_TOOLKIT_APPROVAL_LABEL = "runtime"


def augment_agent(agent: AgentSpec, toolkits: Iterable[ToolkitSpec]) -> AgentSpec:
    """The agent with its tool rows merged into its system prompt (unchanged if it has none)."""
    declared = {toolkit.id: toolkit for toolkit in toolkits}
    agent_json = agent.model_dump_json(by_alias=True)
    rows: list[dict[str, str]] = []
    seen: set[str] = set()

    def add(name: str, description: str, approval: str) -> None:
        if name not in seen:
            seen.add(name)
            rows.append({"name": name, "description": description, "approval": approval})

    for row in _rows(require_native("describe_role_default_tools")(agent_json)):
        add(row["name"], row["description"], _TOOLKIT_APPROVAL_LABEL)
    for toolkit_id in agent.toolkits:
        toolkit = declared.get(toolkit_id)
        config = toolkit.config if toolkit is not None else None
        for row in _describe(toolkit_id, config, agent, agent_json):
            add(row["name"], row["description"], _TOOLKIT_APPROVAL_LABEL)
    for tool in agent.tools:
        add(tool.name, tool.description, str(tool.approval.get("kind", "")))

    if not rows:
        return agent
    prompt = augment_prompt_tools(agent.system_prompt, rows)
    return agent.model_copy(update={"system_prompt": prompt.text, "prompt_cache_key": prompt.cache_key})


def _describe(toolkit_id: str, config: Any, agent: AgentSpec, agent_json: str) -> list[dict[str, str]]:
    describe = require_native("describe_toolkit_tools")
    if toolkit_id == "plans":
        # Native scoping of a config-less plans toolkit gives the role-allowed list.
        allowed = [row["name"] for row in _rows(describe(json.dumps({"id": "plans", "config": None}), agent_json))]
        if config is None:
            config = {"tools": allowed}
        else:
            _check_plan_scope(config, agent.role, allowed)
    return _rows(describe(json.dumps({"id": toolkit_id, "config": config}), agent_json))


def _rows(described_json: str) -> list[dict[str, str]]:
    return [
        {"name": str(row["name"]), "description": str(row.get("description", ""))}
        for row in json.loads(described_json)
    ]


def _check_plan_scope(config: Any, role: str, allowed: list[str]) -> None:
    requested = config.get("tools") if isinstance(config, Mapping) else None
    if isinstance(requested, list):
        outside = [name for name in requested if name in _PLAN_TOOLS and name not in allowed]
        if outside:
            raise ValueError(
                f"toolkit 'plans' tools are scoped by agent role; {role} agents cannot use {outside}"
            )
